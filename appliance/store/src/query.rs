//! Paged reads of stored events by capture time: one routine behind the fleet's `events/query`,
//! the local control socket and `vigil events` on a stopped store, so that all three page, filter
//! and order alike.

use serde::{Deserialize, Serialize};

use crate::{Store, StoreError};
use vigil_core::event::{unix_ns, Event};

/// Events per page: default and most.
pub const PAGE_DEFAULT: usize = 100;
pub const PAGE_MAX: usize = 500;
/// Events one page may read while filtering: a filter that matches little returns a shorter
/// page (with `next`) instead of scanning the whole store at once.
pub const SCAN_MAX: usize = 10_000;

/// A query as it travels (JSON args of `events/query`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EventsQuery {
    /// RFC 3339; capture time at or after.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from: Option<String>,
    /// RFC 3339; capture time before.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub camera: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub label: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<usize>,
    /// The `next` cursor of the previous page.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub after: Option<String>,
    /// `oldest` (default) or `newest` first.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub order: Option<Order>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Order {
    #[default]
    Oldest,
    Newest,
}

/// One page: the events and, when there may be more, the cursor to pass as `after`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Page {
    pub events: Vec<Event>,
    pub next: Option<String>,
}

/// A checked query.
#[derive(Debug, Clone, PartialEq)]
pub struct Query {
    from_ns: u64,
    to_ns: u64,
    camera: Option<String>,
    label: Option<String>,
    limit: usize,
    after: Option<(u64, String)>,
    order: Order,
}

impl EventsQuery {
    /// Checks every field; the error names the field and what to give instead.
    pub fn check(&self) -> Result<Query, String> {
        let limit = self.limit.unwrap_or(PAGE_DEFAULT);
        if limit == 0 || limit > PAGE_MAX {
            return Err(format!("limit must be 1..={PAGE_MAX}"));
        }
        let ns = |field: &str, t: &Option<String>, default: u64| match t {
            None => Ok(default),
            Some(t) => humantime::parse_rfc3339_weak(t)
                .map(unix_ns)
                .map_err(|e| format!("{field} `{t}` is not an RFC 3339 time (e.g. 2026-11-24T08:00:00Z): {e}")),
        };
        let after = match &self.after {
            None => None,
            Some(a) => Some(parse_cursor(a).ok_or("bad `after` cursor: pass the `next` of the previous page")?),
        };
        Ok(Query {
            from_ns: ns("from", &self.from, 0)?,
            to_ns: ns("to", &self.to, u64::MAX)?,
            camera: self.camera.clone(),
            label: self.label.clone(),
            limit,
            after,
            order: self.order.unwrap_or_default(),
        })
    }
}

/// `<start ns>:<event id>` of an event: where a page ended.
fn cursor(e: &Event) -> String {
    format!("{}:{}", e.start_ns, e.id)
}

fn parse_cursor(s: &str) -> Option<(u64, String)> {
    let (ns, id) = s.split_once(':')?;
    Some((ns.parse().ok()?, id.to_owned()))
}

impl Query {
    /// Reads one page from `store`.
    pub fn run(&self, store: &Store) -> Result<Page, StoreError> {
        // The cursor narrows the time range; events at the cursor's own time are told apart by id.
        let (mut from, mut to) = (self.from_ns, self.to_ns);
        match (&self.after, self.order) {
            (Some((ns, _)), Order::Oldest) => from = from.max(*ns),
            (Some((ns, _)), Order::Newest) => to = to.min(ns.saturating_add(1)),
            (None, _) => {}
        }
        let events = store.events_between(from, to);
        let events: Box<dyn Iterator<Item = Result<Event, StoreError>>> = match self.order {
            Order::Oldest => Box::new(events),
            Order::Newest => Box::new(events.rev()),
        };
        let mut page = Vec::new();
        let (mut scanned, mut more) = (0usize, false);
        let mut last_scanned = None;
        for e in events {
            let e = e?;
            if let Some((ns, id)) = &self.after {
                let seen = match self.order {
                    Order::Oldest => e.id.as_str() <= id.as_str(),
                    Order::Newest => e.id.as_str() >= id.as_str(),
                };
                if e.start_ns == *ns && seen {
                    continue;
                }
            }
            scanned += 1;
            if scanned > SCAN_MAX || page.len() == self.limit {
                more = true;
                break;
            }
            last_scanned = Some(cursor(&e));
            if self.camera.as_ref().is_some_and(|c| *c != e.camera_id)
                || self.label.as_ref().is_some_and(|l| *l != e.label)
            {
                continue;
            }
            page.push(e);
        }
        // The next page starts after the last event looked at, matching or not.
        Ok(Page { events: page, next: if more { last_scanned } else { None } })
    }
}

/// The newest `n` events `q` selects, oldest first, read page by page through `page` (the store,
/// or a running service): a short page (the scan limit) does not cut the result short.
pub fn newest<E>(
    mut q: EventsQuery,
    n: usize,
    mut page: impl FnMut(&EventsQuery) -> Result<Page, E>,
) -> Result<Vec<Event>, E> {
    q.order = Some(Order::Newest);
    let mut got = Vec::with_capacity(n.min(PAGE_MAX));
    while got.len() < n {
        q.limit = Some((n - got.len()).min(PAGE_MAX));
        let p = page(&q)?;
        got.extend(p.events);
        match p.next {
            Some(next) => q.after = Some(next),
            None => break,
        }
    }
    got.truncate(n);
    got.reverse();
    Ok(got)
}

/// [`newest`] on a store.
pub fn newest_stored(store: &Store, q: EventsQuery, n: usize) -> Result<Vec<Event>, String> {
    newest(q, n, |q| q.check()?.run(store).map_err(|e| e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store_with(events: &[(u64, &str, &str)]) -> (tempfile::TempDir, Store) {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let events: Vec<Event> = events
            .iter()
            .enumerate()
            .map(|(n, (ns, camera, label))| {
                let mut e = vigil_core::event::test_event(n as u32);
                // Ids in the order of `n`, so that events of equal time have a known order.
                e.id = format!("evt-{n:06}");
                e.start_ns = ns * 1_000; // microseconds: RFC 3339 times carry no finer
                e.start = vigil_core::event::rfc3339(e.start_ns);
                e.camera_id = (*camera).into();
                e.label = (*label).into();
                e
            })
            .collect();
        store.append(&events, "t").unwrap();
        (dir, store)
    }

    /// Every page of `q`, following `next`, as the events' `seq` (their number in `store_with`).
    fn all_pages(store: &Store, mut q: EventsQuery) -> (Vec<u64>, usize) {
        let (mut seqs, mut pages) = (Vec::new(), 0);
        loop {
            let page = q.check().unwrap().run(store).unwrap();
            pages += 1;
            seqs.extend(page.events.iter().map(|e| e.best.seq));
            match page.next {
                Some(n) => q.after = Some(n),
                None => return (seqs, pages),
            }
        }
    }

    #[test]
    fn pages_cover_every_event_once_in_either_order_even_at_equal_times() {
        // Three events share a capture time: the cursor must tell them apart by id.
        let (_dir, store) = store_with(&[
            (10, "a", "x"),
            (20, "a", "x"),
            (20, "b", "x"),
            (20, "a", "y"),
            (30, "b", "y"),
            (40, "a", "x"),
        ]);
        let q = |order, limit| EventsQuery { order: Some(order), limit: Some(limit), ..EventsQuery::default() };
        for limit in 1..=7 {
            assert_eq!(all_pages(&store, q(Order::Oldest, limit)).0, [0, 1, 2, 3, 4, 5], "limit {limit}");
            assert_eq!(all_pages(&store, q(Order::Newest, limit)).0, [5, 4, 3, 2, 1, 0], "limit {limit}");
        }
        assert_eq!(all_pages(&store, q(Order::Oldest, 2)).1, 3, "a full last page has no cursor");
        assert_eq!(all_pages(&store, q(Order::Oldest, 4)).1, 2);
        // Filters and a time range, both orders.
        let filtered = EventsQuery {
            camera: Some("a".into()),
            label: Some("x".into()),
            from: Some(vigil_core::event::rfc3339(20_000)),
            to: Some(vigil_core::event::rfc3339(40_000)),
            limit: Some(1),
            ..EventsQuery::default()
        };
        assert_eq!(all_pages(&store, filtered.clone()).0, [1]);
        let newest = EventsQuery { to: None, order: Some(Order::Newest), ..filtered };
        assert_eq!(all_pages(&store, newest).0, [5, 1]);
    }

    #[test]
    fn a_filter_that_matches_little_pages_through_the_scan_limit() {
        // One `c` event, oldest; SCAN_MAX + 50 `a` events; two `b` events, newest.
        let mut events = vec![(500, "c", "x")];
        events.extend((0..SCAN_MAX as u64 + 50).map(|n| (1_000 + n, "a", "x")));
        events.push((1_000_000, "b", "x"));
        events.push((1_000_001, "b", "x"));
        let (_dir, store) = store_with(&events);
        let b = SCAN_MAX as u64 + 51; // seq of the first `b`
        let q = EventsQuery { camera: Some("b".into()), limit: Some(10), ..EventsQuery::default() };
        let first = q.check().unwrap().run(&store).unwrap();
        assert!(first.events.is_empty(), "the scan limit ended the page early");
        let next = first.next.expect("a cursor to go on from");
        let second = EventsQuery { after: Some(next), ..q }.check().unwrap().run(&store).unwrap();
        let seqs: Vec<u64> = second.events.iter().map(|e| e.best.seq).collect();
        assert_eq!(seqs, [b, b + 1]);
        assert_eq!(second.next, None);
        // `newest` goes on past pages the scan limit cut short.
        let only = |camera: &str, n| {
            let q = EventsQuery { camera: Some(camera.into()), ..EventsQuery::default() };
            newest_stored(&store, q, n).unwrap().iter().map(|e| e.best.seq).collect::<Vec<u64>>()
        };
        assert_eq!(only("c", 5), [0]);
        assert_eq!(only("a", 2), [b - 2, b - 1], "oldest first");
        assert!(only("d", 2).is_empty());
    }

    #[test]
    fn bad_fields_are_named() {
        let bad = |q: EventsQuery, needle: &str| {
            let e = q.check().unwrap_err();
            assert!(e.contains(needle), "{e}");
        };
        bad(EventsQuery { limit: Some(0), ..EventsQuery::default() }, "limit must be 1..=500");
        bad(EventsQuery { limit: Some(PAGE_MAX + 1), ..EventsQuery::default() }, "limit");
        bad(EventsQuery { from: Some("yesterday".into()), ..EventsQuery::default() }, "from `yesterday`");
        bad(EventsQuery { to: Some("soon".into()), ..EventsQuery::default() }, "to `soon`");
        bad(EventsQuery { after: Some("nope".into()), ..EventsQuery::default() }, "cursor");
        let wire: Result<EventsQuery, _> = serde_json::from_str(r#"{"order":"sideways"}"#);
        assert!(wire.unwrap_err().to_string().contains("oldest"));
    }
}
