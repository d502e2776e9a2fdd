//! The manifest decoder on any bytes: never panics, never loops; every
//! problem is one line `FILE:LINE:COL: path: message` inside the input;
//! every object it accepts serializes and decodes again to itself.

#![no_main]
use claude_failover::manifest::{AnyObject, decode_file};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let (objects, errors) = decode_file("fuzz.yaml", data);
    // YAML's line breaks: LF, CR LF, and a lone CR.
    let lines = data
        .iter()
        .enumerate()
        .filter(|&(i, b)| *b == b'\n' || (*b == b'\r' && data.get(i + 1) != Some(&b'\n')))
        .count()
        + 1;
    for e in &errors {
        assert!(e.pos.line >= 1 && e.pos.line <= lines, "{e}");
        assert!(
            !e.to_string().contains('\n') || e.message.contains('\n'),
            "{e}"
        );
    }
    for d in objects {
        let v = d.object.to_value();
        let again =
            AnyObject::from_value(d.object.kind(), v).expect("an accepted object decodes again");
        assert_eq!(again, d.object);
    }
});
