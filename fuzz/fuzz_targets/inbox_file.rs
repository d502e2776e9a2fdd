//! An inbox file (front matter and prompt) on any bytes: never panics;
//! an accepted file is a valid Task whose prompt is the body as written.

#![no_main]
use libfuzzer_sys::fuzz_target;
use std::path::Path;

fuzz_target!(|data: &[u8]| {
    let file = Path::new("/w/.agent-queue/inbox/fuzz.md");
    if let Ok(task) = claude_failover::inbox::parse_task(file, data, "default", Path::new("/w")) {
        let prompt = task["spec"]["prompt"]
            .as_str()
            .expect("a task has a prompt");
        assert!(!prompt.is_empty());
        let text = std::str::from_utf8(data).expect("accepted files are UTF-8");
        assert!(
            text.contains(prompt),
            "the prompt is not the body: {prompt:?}"
        );
        let name = task["metadata"]["name"]
            .as_str()
            .expect("a task has a name");
        claude_failover::manifest::validate::dns1123_label(name).expect("a valid name");
    }
});
