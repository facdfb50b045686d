//! Maps a configuration path (`probes[2].inject.nats.subject`) to the line and
//! column where it is written, so errors can point into the file. Built from
//! the YAML event stream, independent of how values are deserialized.

use std::collections::HashMap;
use yaml_rust2::parser::{Event, MarkedEventReceiver, Parser};
use yaml_rust2::scanner::Marker;

/// Line and column (both 1-based) of every key and sequence item in a document.
#[derive(Debug, Default)]
pub struct Locator {
    places: HashMap<String, (usize, usize)>,
}

impl Locator {
    /// Indexes `text`. A document that does not parse yields an empty index.
    pub fn new(text: &str) -> Self {
        let mut builder = Builder::default();
        let mut parser = Parser::new_from_str(text);
        if parser.load(&mut builder, false).is_err() {
            return Locator::default();
        }
        Locator {
            places: builder.places,
        }
    }

    /// Where `path` is written; for a path that does not exist (a missing
    /// key), the closest existing parent.
    pub fn find(&self, path: &str) -> Option<(usize, usize)> {
        let mut p = path;
        loop {
            if let Some(place) = self.places.get(p) {
                return Some(*place);
            }
            let cut = p.rfind(['.', '['])?;
            p = &p[..cut];
        }
    }
}

enum Frame {
    Map {
        key: Option<String>,
        path: String,
        first: bool,
    },
    Seq {
        index: usize,
        path: String,
    },
}

#[derive(Default)]
struct Builder {
    stack: Vec<Frame>,
    places: HashMap<String, (usize, usize)>,
}

impl Builder {
    /// Called for every node; returns the node's path when it is a value (not a key).
    fn node(&mut self, scalar: Option<&str>, mark: Marker) -> Option<String> {
        let place = (mark.line(), mark.col() + 1);
        match self.stack.last_mut() {
            None => Some(String::new()),
            Some(Frame::Map { key, path, first }) => match key.take() {
                None => {
                    // This node is a key.
                    let name = scalar.unwrap_or("?").to_owned();
                    let child = join_key(path, &name);
                    self.places.entry(child).or_insert(place);
                    if std::mem::take(first) {
                        // A block mapping's start is reported after its first
                        // key; the mapping is where that key is written.
                        let at = self.places.entry(path.clone()).or_insert(place);
                        *at = (*at).min(place);
                    }
                    *key = Some(name);
                    None
                }
                Some(name) => Some(join_key(path, &name)),
            },
            Some(Frame::Seq { index, path }) => {
                let child = format!("{path}[{index}]");
                *index += 1;
                self.places.entry(child.clone()).or_insert(place);
                Some(child)
            }
        }
    }
}

fn join_key(parent: &str, key: &str) -> String {
    if parent.is_empty() {
        key.to_owned()
    } else {
        format!("{parent}.{key}")
    }
}

impl MarkedEventReceiver for Builder {
    fn on_event(&mut self, ev: Event, mark: Marker) {
        match ev {
            Event::Scalar(value, ..) => {
                self.node(Some(&value), mark);
            }
            Event::Alias(_) => {
                self.node(None, mark);
            }
            Event::MappingStart(..) => {
                // A mapping used as a key has no useful path; give it a placeholder.
                let path = self.node(None, mark).unwrap_or_else(|| "?".into());
                self.stack.push(Frame::Map {
                    key: None,
                    path,
                    first: true,
                });
            }
            Event::SequenceStart(..) => {
                let path = self.node(None, mark).unwrap_or_else(|| "?".into());
                self.stack.push(Frame::Seq { index: 0, path });
            }
            Event::MappingEnd | Event::SequenceEnd => {
                self.stack.pop();
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_keys_and_items() {
        let text = "listen: 0.0.0.0:9464\nprobes:\n  - name: a\n    inject:\n      nats:\n        subject: x\n  - name: b\n";
        let loc = Locator::new(text);
        assert_eq!(loc.find("listen"), Some((1, 1)));
        assert_eq!(loc.find("probes[0].inject.nats.subject"), Some((6, 9)));
        assert_eq!(loc.find("probes[1].name"), Some((7, 5)));
        // A missing key falls back to its parent.
        assert_eq!(loc.find("probes[1].deadline"), Some((7, 5)));
        assert_eq!(loc.find("nowhere"), None);
    }
}
