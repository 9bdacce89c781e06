//! What crosses `exec` when the front re-executes itself into another build (Unix), besides
//! the descriptors themselves: one line of text per fact, in [`STATE_VAR`], written by the
//! old image and read once by the new one, which checks that it is the same process.
//!
//! The layout is fixed across releases (the two images are of different builds): `key=value`
//! lines, numbers in decimal, paths, programs and addresses in hexadecimal, a `listener=` line
//! per listening socket. A layout this build cannot read is refused, and the new image exits,
//! since it holds the service's sockets but could not serve them.

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::io;
use std::os::fd::RawFd;
use std::os::unix::ffi::OsStrExt;
use std::path::PathBuf;
use std::time::Duration;

use crate::front::machine::{Gen, PeerId, Snapshot, Timeouts};
use crate::net::Target;
use crate::protocol::Program;

/// The variable the new image finds its state in.
pub(crate) const STATE_VAR: &str = "RISEFRONT_FRONT_STATE";

/// The layout written here; a reader refuses any other.
const FORMAT: u32 = 1;

/// One listening socket across the exec.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Carried {
    pub(crate) target: Target,
    pub(crate) fd: RawFd,
    /// The generations it was handed to.
    pub(crate) users: Vec<Gen>,
    /// The socket file the front created, and its identity.
    pub(crate) file: Option<(PathBuf, (u64, u64))>,
}

/// One control connection across the exec: its descriptor and the version its peer speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Connection {
    pub(crate) fd: RawFd,
    pub(crate) version: Option<u8>,
}

/// Everything the new image needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct State {
    /// The pid of the process that wrote it: the new image must be that process.
    pub(crate) front: u32,
    pub(crate) snapshot: Snapshot,
    pub(crate) endpoint: (PathBuf, PathBuf),
    pub(crate) control: RawFd,
    pub(crate) lock: RawFd,
    /// The serving generation's control connection and the control clients' that cross.
    pub(crate) connections: Vec<(PeerId, Connection)>,
    /// A copy of the read end of the serving generation's stderr pipe, if the front still
    /// reads one (a process it started before ready may write there yet).
    pub(crate) stderr: Option<RawFd>,
    /// What the serving generation runs: what upgrades and respawns start.
    pub(crate) serving: Option<Program>,
    pub(crate) next_peer: PeerId,
    pub(crate) listeners: Vec<Carried>,
}

impl State {
    /// The text form.
    pub(crate) fn encode(&self) -> String {
        let s = &self.snapshot;
        let mut lines = vec![
            format!("format={FORMAT}"),
            format!("front={}", self.front),
            format!("generation={}", s.generation),
            format!("pid={}", s.pid),
            format!("peer={}", s.peer),
            format!("spawned={}", u8::from(s.spawned)),
            format!("ready_ms={}", millis(s.timeouts.ready)),
            format!("drain_ms={}", millis(s.timeouts.drain)),
            format!("probation_ms={}", millis(s.timeouts.probation)),
            format!("served_ms={}", millis(s.served)),
            format!("told_aside={}", s.told_aside),
            format!("failures={}", s.failures),
            format!("ever_ready={}", u8::from(s.ever_ready)),
            format!("next_generation={}", s.next_generation),
            format!(
                "asked={}",
                s.asked.map_or_else(|| "-".to_owned(), |p| p.to_string())
            ),
            format!("clients={}", dotted(&s.clients)),
            format!("reloading={}", u8::from(s.reloading)),
            format!("upgrade_after={}", u8::from(s.upgrade_after)),
            format!(
                "last_upgrade={}",
                s.last_upgrade
                    .as_ref()
                    .map_or_else(|| "-".to_owned(), |o| hex(o.as_bytes()))
            ),
            format!(
                "endpoint_socket={}",
                hex(self.endpoint.0.as_os_str().as_bytes())
            ),
            format!(
                "endpoint_lock={}",
                hex(self.endpoint.1.as_os_str().as_bytes())
            ),
            format!("control_fd={}", self.control),
            format!("lock_fd={}", self.lock),
            format!("next_peer={}", self.next_peer),
        ];
        for (peer, connection) in &self.connections {
            lines.push(format!(
                "connection={peer},{},{}",
                connection.fd,
                version(connection.version)
            ));
        }
        if let Some(fd) = self.stderr {
            lines.push(format!("stderr_fd={fd}"));
        }
        if let Some(wire) = self.serving.as_ref().and_then(Program::to_wire) {
            lines.push(format!("serving={}", hex(&wire)));
        }
        for carried in &self.listeners {
            let target = crate::protocol::targets_to_bytes(std::slice::from_ref(&carried.target))
                .unwrap_or_default();

            let (path, (dev, ino)) = carried
                .file
                .as_ref()
                .map_or((Vec::new(), (0, 0)), |(p, i)| {
                    (p.as_os_str().as_bytes().to_vec(), *i)
                });
            lines.push(format!(
                "listener={},{},{},{},{},{}",
                carried.fd,
                hex(&target),
                dotted(&carried.users),
                hex(&path),
                dev,
                ino
            ));
        }
        lines.join("\n")
    }

    /// Reads what [`State::encode`] wrote; an error says what is wrong with it.
    pub(crate) fn decode(text: &str) -> Result<State, String> {
        let mut fields = BTreeMap::new();
        let mut listeners = Vec::new();
        let mut connections = Vec::new();
        for line in text.lines().filter(|l| !l.is_empty()) {
            let (key, value) = line
                .split_once('=')
                .ok_or_else(|| format!("line {line:?} is not key=value"))?;
            if key == "listener" {
                listeners.push(listener(value)?);
            } else if key == "connection" {
                connections.push(connection(value)?);
            } else if fields.insert(key, value).is_some() {
                return Err(format!("{key} is given twice"));
            }
        }
        let get = |key: &str| -> Result<&str, String> {
            fields
                .get(key)
                .copied()
                .ok_or_else(|| format!("{key} is missing"))
        };
        let format: u32 = number(get("format")?, "format")?;
        if format != FORMAT {
            return Err(format!(
                "its layout is version {format}, and this build reads {FORMAT}"
            ));
        }
        let num = |key: &str| -> Result<u64, String> { number(get(key)?, key) };
        let small = |key: &str| -> Result<u32, String> { number(get(key)?, key) };
        let fd = |key: &str| -> Result<RawFd, String> { number(get(key)?, key) };
        let ms = |key: &str| -> Result<Duration, String> { num(key).map(Duration::from_millis) };
        let flag = |key: &str| -> Result<bool, String> {
            match get(key)? {
                "0" => Ok(false),
                "1" => Ok(true),
                other => Err(format!("{key}={other} is neither 0 nor 1")),
            }
        };
        let path = |key: &str| -> Result<PathBuf, String> {
            Ok(PathBuf::from(OsStr::from_bytes(&unhex(get(key)?, key)?)))
        };
        let asked = match get("asked")? {
            "-" => None,
            v => Some(number(v, "asked")?),
        };
        let serving = match fields.get("serving") {
            Some(wire) => Some(
                Program::from_wire(&unhex(wire, "serving")?)
                    .map_err(|e| format!("serving: {e:?}"))?,
            ),
            None => None,
        };
        // Absent from the state of an image before it was carried: nothing to say then.
        let last_upgrade = match fields.get("last_upgrade").copied() {
            None | Some("-") => None,
            Some(text) => Some(
                String::from_utf8(unhex(text, "last_upgrade")?)
                    .map_err(|_| "last_upgrade is not UTF-8".to_owned())?,
            ),
        };
        let stderr = match fields.get("stderr_fd") {
            Some(v) => Some(number(v, "stderr_fd")?),
            None => None,
        };
        Ok(State {
            front: small("front")?,
            snapshot: Snapshot {
                generation: num("generation")?,
                pid: small("pid")?,
                peer: num("peer")?,
                spawned: flag("spawned")?,
                timeouts: Timeouts {
                    ready: ms("ready_ms")?,
                    drain: ms("drain_ms")?,
                    probation: ms("probation_ms")?,
                },
                served: ms("served_ms")?,
                told_aside: small("told_aside")?,
                failures: small("failures")?,
                ever_ready: flag("ever_ready")?,
                next_generation: num("next_generation")?,
                asked,
                clients: undotted(get("clients")?, "clients")?,
                reloading: flag("reloading")?,
                upgrade_after: flag("upgrade_after")?,
                last_upgrade,
            },
            endpoint: (path("endpoint_socket")?, path("endpoint_lock")?),
            control: fd("control_fd")?,
            lock: fd("lock_fd")?,
            connections,
            stderr,
            serving,
            next_peer: num("next_peer")?,
            listeners,
        })
    }
}

fn listener(value: &str) -> Result<Carried, String> {
    let parts: Vec<&str> = value.split(',').collect();
    let [fd, target, users, path, dev, ino] = parts.as_slice() else {
        return Err(format!("listener={value} has not 6 fields"));
    };
    let mut targets = crate::protocol::targets_from_bytes(&unhex(target, "listener")?)
        .map_err(|e| format!("listener address: {e:?}"))?;
    let (Some(target), true) = (targets.pop(), targets.is_empty()) else {
        return Err(format!("listener={value} names not one address"));
    };
    let users = undotted(users, "listener users")?;
    let path = unhex(path, "listener file")?;
    let file = (!path.is_empty()).then(|| -> Result<_, String> {
        Ok((
            PathBuf::from(OsStr::from_bytes(&path)),
            (number(dev, "listener dev")?, number(ino, "listener ino")?),
        ))
    });
    Ok(Carried {
        target,
        fd: number(fd, "listener fd")?,
        users,
        file: file.transpose()?,
    })
}

fn connection(value: &str) -> Result<(PeerId, Connection), String> {
    let parts: Vec<&str> = value.split(',').collect();
    let [peer, fd, version] = parts.as_slice() else {
        return Err(format!("connection={value} has not 3 fields"));
    };
    let version = match *version {
        "-" => None,
        v => Some(number(v, "connection version")?),
    };
    Ok((
        number(peer, "connection peer")?,
        Connection {
            fd: number(fd, "connection fd")?,
            version,
        },
    ))
}

/// Numbers joined by dots (none: empty).
fn dotted(numbers: &[u64]) -> String {
    numbers
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(".")
}

fn undotted(text: &str, key: &str) -> Result<Vec<u64>, String> {
    text.split('.')
        .filter(|n| !n.is_empty())
        .map(|n| number(n, key))
        .collect()
}

fn number<T: std::str::FromStr>(value: &str, key: &str) -> Result<T, String> {
    value
        .parse()
        .map_err(|_| format!("{key}={value} is not a number in range"))
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

fn version(v: Option<u8>) -> String {
    v.map_or_else(|| "-".to_owned(), |v| v.to_string())
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(text: &str, key: &str) -> Result<Vec<u8>, String> {
    if !text.len().is_multiple_of(2) {
        return Err(format!("{key}: odd hexadecimal length"));
    }
    (0..text.len())
        .step_by(2)
        .map(|i| {
            text.get(i..i + 2)
                .and_then(|pair| u8::from_str_radix(pair, 16).ok())
                .ok_or_else(|| format!("{key}: not hexadecimal"))
        })
        .collect()
}

/// The state left for this process by its previous image, read once: `None` when there is
/// none, or it was written by another process (a generation inherits the variable's absence:
/// the front removes it from what it starts; anything else is not ours).
pub(crate) fn take() -> io::Result<Option<State>> {
    use std::sync::atomic::{AtomicBool, Ordering};
    static TAKEN: AtomicBool = AtomicBool::new(false);
    let Some(text) = std::env::var_os(STATE_VAR) else {
        return Ok(None);
    };
    if TAKEN.swap(true, Ordering::AcqRel) {
        return Ok(None);
    }
    let bad = |why: String| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("risefront: {STATE_VAR} cannot be used: {why}"),
        )
    };
    let text = text
        .to_str()
        .ok_or_else(|| bad("it is not text".to_owned()))?;
    let state = State::decode(text).map_err(bad)?;
    if state.front != std::process::id() {
        return Ok(None);
    }
    Ok(Some(state))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state() -> State {
        State {
            front: 4242,
            snapshot: Snapshot {
                generation: 7,
                pid: 5000,
                peer: 12,
                spawned: true,
                timeouts: Timeouts {
                    ready: Duration::from_secs(60),
                    drain: Duration::from_millis(u64::MAX),
                    probation: Duration::ZERO,
                },
                served: Duration::from_millis(12_345),
                told_aside: 2,
                failures: 1,
                ever_ready: true,
                next_generation: 9,
                asked: Some(30),
                clients: vec![31, 33],
                reloading: true,
                upgrade_after: false,
                last_upgrade: Some("last upgrade failed: generation 6 exited (status 1) ✗".into()),
            },
            endpoint: ("/run/a b/x.sock".into(), "/run/a b/x.lock".into()),
            control: 5,
            lock: 6,
            connections: vec![
                (
                    12,
                    Connection {
                        fd: 7,
                        version: None,
                    },
                ),
                (
                    30,
                    Connection {
                        fd: 8,
                        version: Some(7),
                    },
                ),
            ],
            stderr: Some(9),
            serving: Some(Program {
                exe: "/srv/app/v2/app".into(),
                args: vec!["--x=1,2".into(), "".into()],
                cwd: "/srv".into(),
            }),
            next_peer: 34,
            listeners: vec![
                Carried {
                    target: Target::Tcp(vec!["127.0.0.1:8080".parse().expect("addr")]),
                    fd: 10,
                    users: vec![6, 7],
                    file: None,
                },
                Carried {
                    target: Target::Unix("/run/app/http.sock".into()),
                    fd: 11,
                    users: vec![],
                    file: Some(("/run/app/http.sock".into(), (3, 99))),
                },
            ],
        }
    }

    #[test]
    fn the_state_reads_back_as_written() {
        let state = state();
        assert_eq!(State::decode(&state.encode()), Ok(state.clone()));
        let mut bare = State {
            stderr: None,
            serving: None,
            listeners: Vec::new(),
            connections: Vec::new(),
            ..state
        };
        bare.snapshot.asked = None;
        bare.snapshot.clients.clear();
        bare.snapshot.last_upgrade = None;
        assert_eq!(State::decode(&bare.encode()), Ok(bare.clone()));
        // The state of an image from before the last upgrade's outcome was carried.
        let without = bare
            .encode()
            .lines()
            .filter(|l| !l.starts_with("last_upgrade="))
            .collect::<Vec<_>>()
            .join("\n");
        assert_eq!(State::decode(&without), Ok(bare));
    }

    #[test]
    fn a_damaged_state_is_refused_with_what_is_wrong() {
        let text = state().encode();
        let cases = [
            (text.replace("format=1", "format=2"), "layout is version 2"),
            (text.replace("pid=5000\n", ""), "pid is missing"),
            (text.replace("spawned=1", "spawned=yes"), "neither 0 nor 1"),
            (format!("{text}\nfront=1"), "front is given twice"),
            (format!("{text}\nnonsense"), "not key=value"),
            (text.replace("lock_fd=6", "lock_fd=-x"), "lock_fd=-x"),
            (format!("{text}\nlistener=1,zz,,,0,0"), "not hexadecimal"),
            (format!("{text}\nlistener=1,0000,,,0,0"), "not one address"),
            (format!("{text}\nlistener=1"), "not 6 fields"),
            (format!("{text}\nconnection=1,2"), "not 3 fields"),
            (text.replace("clients=31.33", "clients=31.x"), "clients=x"),
            (
                text.replace("last_upgrade=", "last_upgrade=ff"),
                "last_upgrade is not UTF-8",
            ),
            (
                text.replace("endpoint_lock=", "endpoint_lock=a"),
                "odd hexadecimal",
            ),
        ];
        for (damaged, why) in cases {
            let e = State::decode(&damaged).expect_err(why);
            assert!(e.contains(why), "{e:?} should say {why:?}");
        }
    }
}
