//! Which signed entry a target name means: TUF's pre-order depth-first search over delegations
//! (specification 1.0, 5.6.7).
//!
//! The top-level targets role is asked first. A role that does not list the name hands the search
//! to the roles it delegates to, in the order it lists them, each only if its paths cover the name;
//! a role whose paths cover the name and that is `terminating` ends the search for everything after
//! it once its own subtree has been searched. A role is visited at most once per search (a cycle or a
//! diamond in the delegation graph). A role that could not be loaded or verified ends the search:
//! the name then resolves to nothing, rather than to whatever a later role says.
//!
//! Path patterns match as python-tuf (the reference implementation) matches them: the name and the
//! pattern are split at `/` into as many segments, and each segment matches shell-style (`*`, `?`,
//! `[...]`, `[!...]`), so `*` never crosses a `/`. A `path_hash_prefixes` delegation covers the names
//! whose SHA-256 (hex) starts with one of the prefixes.

use std::collections::{BTreeSet, HashMap};

use sha2::Digest;
use tough::schema::{DelegatedRole, PathSet, Signed, Target, Targets};

/// The most roles one search visits (python-tuf's default too).
pub const MAX_DELEGATIONS: usize = 32;

/// The name of the top-level targets role.
pub const TOP_LEVEL: &str = "targets";

/// Delegated roles as loaded for a refresh: the verified metadata, or why it is unusable.
pub type Loaded = HashMap<String, Result<Signed<Targets>, String>>;

/// Where a search ended.
#[derive(Debug, Clone, PartialEq)]
pub enum Resolution<'a> {
    /// The entry that decides, and the role that signed it (`targets` for the top-level role).
    Found { target: &'a Target, role: String },
    /// No role the search reached lists the name.
    NotFound,
    /// The search reached a role that could not be used; it stopped there.
    Broken { role: String, why: String },
}

/// Resolves `name` from `top` (the top-level targets metadata) through the `loaded` delegated roles.
pub fn resolve<'a>(top: &'a Targets, loaded: &'a Loaded, name: &str) -> Resolution<'a> {
    // The stack holds roles still to visit, the next one last.
    let mut stack: Vec<(&'a str, Option<&'a DelegatedRole>)> = vec![(TOP_LEVEL, None)];
    let mut visited = BTreeSet::new();
    while let Some((role, _)) = stack.pop() {
        if visited.len() >= MAX_DELEGATIONS {
            break;
        }
        if !visited.insert(role) {
            continue;
        }
        let targets = if role == TOP_LEVEL {
            top
        } else {
            match loaded.get(role) {
                Some(Ok(signed)) => &signed.signed,
                Some(Err(why)) => return Resolution::Broken { role: role.to_owned(), why: why.clone() },
                None => {
                    return Resolution::Broken { role: role.to_owned(), why: "its metadata was not loaded".to_owned() }
                }
            }
        };
        if let Some((_, target)) = targets.targets.iter().find(|(n, _)| n.raw() == name) {
            return Resolution::Found { target, role: role.to_owned() };
        }
        let Some(delegations) = &targets.delegations else { continue };
        let mut children = Vec::new();
        for child in &delegations.roles {
            if !covers(&child.paths, name) {
                continue;
            }
            children.push((child.name.as_str(), Some(child)));
            if child.terminating {
                // Nothing after a terminating role is asked: not its siblings, not what the
                // search would have come back to.
                stack.clear();
                break;
            }
        }
        stack.extend(children.into_iter().rev());
    }
    Resolution::NotFound
}

/// Whether a delegation's paths cover `name`.
pub fn covers(paths: &PathSet, name: &str) -> bool {
    match paths {
        PathSet::Paths(patterns) => patterns.iter().any(|p| path_matches(p.value(), name)),
        PathSet::PathHashPrefixes(prefixes) => {
            let digest = hex::encode(sha2::Sha256::digest(name.as_bytes()));
            prefixes.iter().any(|p| digest.starts_with(p.value()))
        }
    }
}

/// A PATHPATTERN against a target name, segment by segment.
pub fn path_matches(pattern: &str, name: &str) -> bool {
    let (p, n): (Vec<&str>, Vec<&str>) = (pattern.split('/').collect(), name.split('/').collect());
    p.len() == n.len() && p.iter().zip(&n).all(|(p, n)| glob(p.as_bytes(), n.as_bytes()))
}

/// Shell-style matching of one segment: `*` any run, `?` one character, `[abc]`, `[a-z]`, `[!a]`.
/// Matches on bytes; a multi-byte character counts as several for `?` (names are ASCII in practice).
fn glob(p: &[u8], s: &[u8]) -> bool {
    let (mut pi, mut si) = (0, 0);
    // Where the last `*` was, and the input position it has swallowed up to.
    let mut star: Option<(usize, usize)> = None;
    while si < s.len() {
        let step = match p.get(pi) {
            Some(b'*') => {
                star = Some((pi, si));
                pi += 1;
                continue;
            }
            Some(b'?') => Some(pi + 1),
            Some(b'[') => {
                class(&p[pi..], s[si]).map(|(hit, len)| (hit, pi + len)).and_then(|(hit, next)| hit.then_some(next))
            }
            Some(&c) if c == s[si] => Some(pi + 1),
            _ => None,
        };
        match (step, star) {
            (Some(next), _) => {
                pi = next;
                si += 1;
            }
            (None, Some((sp, ss))) => {
                pi = sp + 1;
                si = ss + 1;
                star = Some((sp, ss + 1));
            }
            (None, None) => return false,
        }
    }
    p[pi..].iter().all(|&c| c == b'*')
}

/// A `[...]` class at the start of `p`: whether `c` is in it, and the class's length. `None` when
/// the bracket is not closed (it then matches a literal `[`, as fnmatch does).
fn class(p: &[u8], c: u8) -> Option<(bool, usize)> {
    let mut i = 1;
    let negate = matches!(p.get(i), Some(b'!'));
    if negate {
        i += 1;
    }
    let start = i;
    let mut hit = false;
    while i < p.len() {
        if p[i] == b']' && i > start {
            return Some((hit != negate, i + 1));
        }
        if i + 2 < p.len() && p[i + 1] == b'-' && p[i + 2] != b']' {
            hit |= (p[i]..=p[i + 2]).contains(&c);
            i += 3;
        } else {
            hit |= p[i] == c;
            i += 1;
        }
    }
    (c == b'[').then_some((true, 1))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patterns_match_segment_by_segment_as_fnmatch_does() {
        let yes = [
            ("models/people-*", "models/people-1.2.0.tar"),
            ("*", "vigil"),
            ("models/*.tar", "models/a.tar"),
            ("*/*", "models/x"),
            ("models/people-?.tar", "models/people-1.tar"),
            ("models/[pq]eople", "models/people"),
            ("models/[!x]eople", "models/people"),
            ("models/[a-z]*", "models/people"),
            ("a*b*c", "aXXbYYc"),
            ("[", "["),
        ];
        for (p, n) in yes {
            assert!(path_matches(p, n), "{p} should match {n}");
        }
        let no = [
            ("models/*", "models/people/1.tar"),
            ("*", "models/people"),
            ("models/people-*", "models/cars-1.0.0.tar"),
            ("models/people-?.tar", "models/people-10.tar"),
            ("models/[!p]eople", "models/people"),
            ("models/*.tar", "models/a.tar.gz"),
            ("a*b*c", "aXXbYY"),
            ("*.tgz", "targets/foo.tgz"),
        ];
        for (p, n) in no {
            assert!(!path_matches(p, n), "{p} should not match {n}");
        }
    }

    #[test]
    fn hash_prefixes_cover_names_by_their_sha256() {
        let name = "models/people-1.0.0.tar";
        let digest = hex::encode(sha2::Sha256::digest(name.as_bytes()));
        let set = |p: &str| PathSet::PathHashPrefixes(vec![p.parse().unwrap()]);
        assert!(covers(&set(&digest[..2]), name));
        let other = if digest.starts_with('0') { "1" } else { "0" };
        assert!(!covers(&set(other), name));
    }
}
