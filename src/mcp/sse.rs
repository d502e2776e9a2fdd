//! Reading the daemon's event stream (`GET /api/v1/watch`): server-sent
//! events parsed line by line into [`WatchItem`]s.

use crate::api::Kind;
use serde_json::Value;

/// One item of the daemon's event stream.
#[derive(Debug, Clone, PartialEq)]
pub enum WatchItem {
    /// An object was added, modified or deleted (`type`), whole.
    Change {
        kind: Kind,
        namespace: String,
        name: String,
        /// `ADDED`: the object is new.
        added: bool,
        /// `DELETED`: the object is gone.
        deleted: bool,
        object: Value,
    },
    /// A recorded event about an object.
    Event {
        kind: Kind,
        namespace: String,
        name: String,
        event: Value,
    },
    /// The reader fell behind and missed this many items.
    Lagged(u64),
}

impl WatchItem {
    /// The object the item is about (None for `Lagged`).
    pub fn object(&self) -> Option<(Kind, &str, &str)> {
        match self {
            WatchItem::Change {
                kind,
                namespace,
                name,
                ..
            }
            | WatchItem::Event {
                kind,
                namespace,
                name,
                ..
            } => Some((*kind, namespace, name)),
            WatchItem::Lagged(_) => None,
        }
    }
}

/// Accumulates lines until a blank one ends an event.
#[derive(Default)]
pub struct Parser {
    event: String,
    data: String,
}

impl Parser {
    /// Feeds one line (without its line ending); returns an item when the
    /// line completed one the caller cares about. Comments, keep-alives and
    /// unknown events give nothing.
    pub fn line(&mut self, line: &str) -> Option<WatchItem> {
        if line.is_empty() {
            let (event, data) = (
                std::mem::take(&mut self.event),
                std::mem::take(&mut self.data),
            );
            return parse(&event, &data);
        }
        if line.starts_with(':') {
            return None;
        }
        let (field, value) = line.split_once(':').unwrap_or((line, ""));
        let value = value.strip_prefix(' ').unwrap_or(value);
        match field {
            "event" => self.event = value.to_string(),
            "data" => {
                if !self.data.is_empty() {
                    self.data.push('\n');
                }
                self.data.push_str(value);
            }
            _ => {}
        }
        None
    }
}

fn parse(event: &str, data: &str) -> Option<WatchItem> {
    match event {
        "lagged" => data.trim().parse().ok().map(WatchItem::Lagged),
        "change" => {
            let v: Value = serde_json::from_str(data).ok()?;
            let object = v.get("object")?.clone();
            let kind = object
                .get("kind")
                .and_then(Value::as_str)
                .and_then(Kind::from_kind_field)?;
            let meta = object.get("metadata")?;
            Some(WatchItem::Change {
                kind,
                namespace: str_of(meta, "namespace"),
                name: str_of(meta, "name"),
                added: v.get("type").and_then(Value::as_str) == Some("ADDED"),
                deleted: v.get("type").and_then(Value::as_str) == Some("DELETED"),
                object,
            })
        }
        "event" => {
            let v: Value = serde_json::from_str(data).ok()?;
            let involved = v.get("involvedObject")?;
            let kind = involved
                .get("kind")
                .and_then(Value::as_str)
                .and_then(Kind::from_kind_field)?;
            Some(WatchItem::Event {
                kind,
                namespace: str_of(involved, "namespace"),
                name: str_of(involved, "name"),
                event: v.clone(),
            })
        }
        _ => None,
    }
}

fn str_of(v: &Value, key: &str) -> String {
    v.get(key)
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_daemons_stream() {
        let text = ": watching\n\nevent: change\ndata: {\"type\":\"MODIFIED\",\"object\":{\"kind\":\"Task\",\"metadata\":{\"namespace\":\"default\",\"name\":\"t1\"},\"status\":{\"phase\":\"Running\"}}}\n\n: keep-alive\n\nevent: event\ndata: {\"involvedObject\":{\"kind\":\"Account\",\"namespace\":\"default\",\"name\":\"a\"},\"reason\":\"PhaseChanged\"}\n\nevent: lagged\ndata: 7\n\nevent: other\ndata: x\n\n";
        let mut p = Parser::default();
        let items: Vec<WatchItem> = text.lines().filter_map(|l| p.line(l)).collect();
        assert_eq!(items.len(), 3, "{items:?}");
        match &items[0] {
            WatchItem::Change {
                kind,
                name,
                deleted,
                object,
                ..
            } => {
                assert_eq!((*kind, name.as_str(), *deleted), (Kind::Task, "t1", false));
                assert_eq!(object["status"]["phase"], "Running");
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(items[1].object(), Some((Kind::Account, "default", "a")));
        assert_eq!(items[2], WatchItem::Lagged(7));
    }
}
