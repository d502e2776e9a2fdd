//! Values printed the way kubectl prints them.
//!
//! kubectl is written in Go, and its `-o jsonpath` and `-o custom-columns`
//! output is Go's formatting of the decoded JSON: floats in `%v` form
//! (`1e+06`), maps and lists in `fmt.Sprint` form (`map[a:b]`, `[1 2]`)
//! for columns, and `encoding/json` (sorted keys, `1e+21`) where a map or a
//! list is printed by a template. These functions reproduce those forms so
//! a script written against kubectl reads the same text here.

use serde_json::Value;

/// The shortest decimal digits of `f` (no sign, no dot) and the exponent of
/// its first digit: 1234.5 → ("12345", 3).
fn digits(f: f64) -> (String, i32) {
    let e = format!("{:e}", f.abs());
    let (mantissa, exp) = e.split_once('e').expect("LowerExp has an exponent");
    (
        mantissa.replace('.', ""),
        exp.parse().expect("LowerExp's exponent is an integer"),
    )
}

/// `d.ddde±XX`, Go's `%e` with the shortest digits (two exponent digits at
/// least).
fn exponent_form(neg: bool, digits: &str, exp: i32) -> String {
    let sign = if neg { "-" } else { "" };
    let mantissa = if digits.len() > 1 {
        format!("{}.{}", &digits[..1], &digits[1..])
    } else {
        digits.to_string()
    };
    let esign = if exp < 0 { '-' } else { '+' };
    format!("{sign}{mantissa}e{esign}{:02}", exp.abs())
}

/// Plain decimal form of the shortest digits: Go's `%f` with precision -1.
fn decimal_form(neg: bool, digits: &str, exp: i32) -> String {
    let sign = if neg { "-" } else { "" };
    let n = digits.len() as i32;
    let body = if exp < 0 {
        format!("0.{}{}", "0".repeat((-exp - 1) as usize), digits)
    } else if exp + 1 >= n {
        format!("{digits}{}", "0".repeat((exp + 1 - n) as usize))
    } else {
        let (int, frac) = digits.split_at((exp + 1) as usize);
        format!("{int}.{frac}")
    };
    format!("{sign}{body}")
}

/// Go's `%v` of a float64 (`strconv.FormatFloat(f, 'g', -1, 64)`): the
/// shortest digits, in exponent form below 1e-4 and from 1e6 on (Go decides
/// the shortest form's notation with precision 6).
pub fn float_text(f: f64) -> String {
    if f == 0.0 {
        return "0".into();
    }
    if !f.is_finite() {
        return if f.is_nan() {
            "NaN".into()
        } else if f > 0.0 {
            "+Inf".into()
        } else {
            "-Inf".into()
        };
    }
    let (d, exp) = digits(f);
    if !(-4..6).contains(&exp) {
        exponent_form(f < 0.0, &d, exp)
    } else {
        decimal_form(f < 0.0, &d, exp)
    }
}

/// `encoding/json`'s float: decimal unless below 1e-6 or from 1e21 on,
/// where the exponent loses its leading zero (`1e-7`, `1e+21`).
fn float_json(f: f64) -> String {
    if f == 0.0 || !f.is_finite() {
        return "0".into();
    }
    let (d, exp) = digits(f);
    let abs = f.abs();
    if !(1e-6..1e21).contains(&abs) {
        let sign = if f < 0.0 { "-" } else { "" };
        let mantissa = if d.len() > 1 {
            format!("{}.{}", &d[..1], &d[1..])
        } else {
            d.clone()
        };
        let esign = if exp < 0 { '-' } else { '+' };
        format!("{sign}{mantissa}e{esign}{}", exp.abs())
    } else {
        decimal_form(f < 0.0, &d, exp)
    }
}

fn number_text(n: &serde_json::Number, json: bool) -> String {
    if n.is_f64() {
        let f = n.as_f64().unwrap_or_default();
        if json { float_json(f) } else { float_text(f) }
    } else {
        n.to_string()
    }
}

/// A template's text for one result: strings as they are, numbers and
/// booleans in Go's form, `null`, and maps and lists as compact JSON.
pub fn text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Number(n) => number_text(n, false),
        Value::Bool(b) => b.to_string(),
        Value::Null => "null".into(),
        Value::Array(_) | Value::Object(_) => json(v),
    }
}

/// Compact JSON as Go's `encoding/json` writes it (sorted keys, its float
/// forms, `<`, `>` and `&` escaped).
pub fn json(v: &Value) -> String {
    let mut out = String::new();
    write_json(v, None, 0, &mut out);
    out
}

/// Indented JSON (four spaces), as `jsonpath-as-json` prints it.
pub fn json_indented(v: &Value) -> String {
    let mut out = String::new();
    write_json(v, Some("    "), 0, &mut out);
    out
}

fn write_string(s: &str, out: &mut String) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '<' | '>' | '&' | '\u{2028}' | '\u{2029}' => {
                out.push_str(&format!("\\u{:04x}", c as u32))
            }
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
}

fn write_json(v: &Value, indent: Option<&str>, depth: usize, out: &mut String) {
    let newline = |out: &mut String, depth: usize| {
        if let Some(i) = indent {
            out.push('\n');
            out.push_str(&i.repeat(depth));
        }
    };
    match v {
        Value::Null => out.push_str("null"),
        Value::Bool(b) => out.push_str(&b.to_string()),
        Value::Number(n) => out.push_str(&number_text(n, true)),
        Value::String(s) => write_string(s, out),
        Value::Array(a) if a.is_empty() => out.push_str("[]"),
        Value::Array(a) => {
            out.push('[');
            for (i, x) in a.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                newline(out, depth + 1);
                write_json(x, indent, depth + 1, out);
            }
            newline(out, depth);
            out.push(']');
        }
        Value::Object(m) if m.is_empty() => out.push_str("{}"),
        Value::Object(m) => {
            out.push('{');
            let mut keys: Vec<&String> = m.keys().collect();
            keys.sort();
            for (i, k) in keys.into_iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                newline(out, depth + 1);
                write_string(k, out);
                out.push(':');
                if indent.is_some() {
                    out.push(' ');
                }
                write_json(&m[k], indent, depth + 1, out);
            }
            newline(out, depth);
            out.push('}');
        }
    }
}

/// Go's `fmt.Sprint` of a decoded JSON value, as `custom-columns` prints a
/// cell: `map[a:b c:1]`, `[x y]`, `<nil>`.
pub fn sprint(v: &Value) -> String {
    match v {
        Value::Null => "<nil>".into(),
        Value::Array(a) => format!("[{}]", a.iter().map(sprint).collect::<Vec<_>>().join(" ")),
        Value::Object(m) => {
            let mut keys: Vec<&String> = m.keys().collect();
            keys.sort();
            let cells: Vec<String> = keys
                .into_iter()
                .map(|k| format!("{k}:{}", sprint(&m[k])))
                .collect();
            format!("map[{}]", cells.join(" "))
        }
        other => text(other),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn floats_as_go_prints_them() {
        // Each pair checked against kubectl 1.32's jsonpath output.
        for (f, want) in [
            (1000000.0, "1e+06"),
            (123456789.5, "1.234567895e+08"),
            (0.00001, "1e-05"),
            (1e21, "1e+21"),
            (123456.0, "123456"),
            (0.0001, "0.0001"),
            (0.85, "0.85"),
            (42.0, "42"),
            (-2.5, "-2.5"),
            (0.0, "0"),
        ] {
            assert_eq!(float_text(f), want, "{f}");
        }
        for (f, want) in [
            (1000000.0, "1000000"),
            (123456789.5, "123456789.5"),
            (0.00001, "0.00001"),
            (1e21, "1e+21"),
            (1e-7, "1e-7"),
            (42.0, "42"),
        ] {
            assert_eq!(float_json(f), want, "{f}");
        }
    }

    #[test]
    fn text_json_and_sprint() {
        let v = json!({"z": 1, "a": "s", "l": [1, "two", {"x": 1.0}], "n": null, "h": "<&>"});
        assert_eq!(
            json(&v),
            r#"{"a":"s","h":"\u003c\u0026\u003e","l":[1,"two",{"x":1}],"n":null,"z":1}"#
        );
        assert_eq!(text(&json!("plain")), "plain");
        assert_eq!(text(&json!(true)), "true");
        assert_eq!(text(&Value::Null), "null");
        assert_eq!(
            sprint(&json!({"b": [1, "x"], "a": null})),
            "map[a:<nil> b:[1 x]]"
        );
        assert_eq!(
            json_indented(&json!([{"a": 1}])),
            "[\n    {\n        \"a\": 1\n    }\n]"
        );
    }
}
