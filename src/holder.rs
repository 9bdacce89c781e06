//! Who holds a TCP port this program could not bind, when it is worth telling: a service run
//! by systemd, one whose control directory is not ours, or one of another user. Without it the
//! person upgrading a systemd service from a shell reads "in use by another program" or "no
//! front is running", and nothing points to `systemctl reload` or `RISEFRONT_DIR`.
//!
//! Linux only, from `/proc`: the listening socket's owner and inode (`/proc/net/tcp*`), the
//! processes holding that inode (only those this user may inspect; root sees all), the
//! holder's systemd unit (`/proc/PID/cgroup`), and its listening Unix sockets
//! (`/proc/net/unix`), one of which is its front's control socket. Elsewhere nothing is found,
//! and the errors stay as they were. Best effort throughout: a file that cannot be read means
//! nothing is said, never an error.

use std::fmt;
use std::path::{Path, PathBuf};

/// What risefront found out about the process holding an address, and how to reach it (see
/// [`BindError::InUseElsewhere`](crate::BindError::InUseElsewhere) and
/// [`UpgradeError::NoFront`](crate::UpgradeError::NoFront)).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Holder {
    /// The holding process (a service's front, when it is one), if this user may see it.
    pub pid: Option<u32>,
    /// Its program's name, as the system shows it.
    pub program: Option<String>,
    /// The user owning the socket: a name, or the uid when it has none.
    pub user: String,
    /// Whether that user is not the one running this program.
    pub other_user: bool,
    /// The systemd unit it runs in, as `systemctl` names it (`app.service`).
    pub unit: Option<String>,
    /// The unit belongs to a user's service manager (`systemctl --user`).
    pub user_unit: bool,
    /// Its risefront control socket, when it is a front and that socket is not where this
    /// program looked.
    pub control_socket: Option<PathBuf>,
    /// The control socket this program looked for, to say what differs from the holder's.
    looked_for: Option<PathBuf>,
}

impl Holder {
    /// Whether anything here tells the reader what to do; if not, the plain error is better.
    #[cfg_attr(not(target_os = "linux"), allow(dead_code))] // Only Linux finds holders.
    pub(crate) fn is_useful(&self) -> bool {
        self.unit.is_some() || self.control_socket.is_some() || self.other_user
    }

    /// What to do instead, as a sentence: the unit's reload first, then the control directory
    /// and the user.
    pub(crate) fn advice(&self) -> String {
        let mut ways = Vec::new();
        if let Some(unit) = &self.unit {
            let user = if self.user_unit { " --user" } else { "" };
            ways.push(format!("upgrade it with `systemctl{user} reload {unit}`"));
        }
        // Its control socket is `<dir>/<service name>.sock`: say which of the two differs.
        let theirs = self.control_socket.as_deref();
        let ours = self.looked_for.as_deref();
        let differs = |part: fn(&Path) -> Option<&std::ffi::OsStr>| {
            theirs
                .and_then(part)
                .filter(|t| ours.and_then(part) != Some(*t))
        };
        let mut settings = Vec::new();
        if let Some(dir) = differs(|p| p.parent().map(Path::as_os_str)) {
            settings.push(format!("RISEFRONT_DIR={}", Path::new(dir).display()));
        }
        if let Some(name) = differs(Path::file_stem) {
            settings.push(format!("RISEFRONT_NAME={}", name.to_string_lossy()));
        }
        let dir = (!settings.is_empty()).then(|| settings.join(" "));
        match (dir, self.other_user) {
            (Some(dir), true) => ways.push(format!(
                "start this build as user {} with {dir} (`sudo -u {} env {dir} ...`)",
                self.user, self.user
            )),
            (Some(dir), false) => ways.push(format!("start this build with {dir}")),
            (None, true) => ways.push(format!(
                "start this build as user {} (`sudo -u {} ...`)",
                self.user, self.user
            )),
            (None, false) => {}
        }
        ways.join("; or ")
    }
}

/// `app (pid 12, user app), systemd unit app.service, control socket /run/app/risefront/x.sock`
impl fmt::Display for Holder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.program.as_deref().unwrap_or("a process"))?;
        match self.pid {
            Some(pid) => write!(f, " (pid {pid}, user {})", self.user)?,
            None => write!(f, " (user {})", self.user)?,
        }
        if let Some(unit) = &self.unit {
            write!(f, ", systemd unit {unit}")?;
        }
        if let Some(socket) = &self.control_socket {
            write!(
                f,
                ", whose risefront control socket is {}",
                socket.display()
            )?;
        }
        Ok(())
    }
}

/// The holder of a TCP listener on `port`, if it is worth telling about. `ours` is the control
/// socket this program looked for: a holder whose control socket is that one needs no advice.
pub(crate) fn of_port(port: u16, ours: Option<&Path>) -> Option<Holder> {
    #[cfg(target_os = "linux")]
    {
        let holder = linux::of_port(port, ours)?;
        holder.is_useful().then_some(holder)
    }
    #[cfg(not(target_os = "linux"))]
    {
        let _ = (port, ours);
        None
    }
}

/// The control socket of the front whose process id is `pid`, if it is one this user may
/// inspect (Linux).
pub(crate) fn control_socket_of(pid: u32) -> Option<PathBuf> {
    #[cfg(target_os = "linux")]
    {
        linux::control_socket(pid)
    }
    #[cfg(not(target_os = "linux"))]
    {
        let _ = pid;
        None
    }
}

#[cfg(target_os = "linux")]
mod linux {
    use std::collections::{BTreeSet, HashMap};
    use std::fs;
    use std::path::{Path, PathBuf};

    use super::Holder;

    pub(super) fn of_port(port: u16, ours: Option<&Path>) -> Option<Holder> {
        let (inode, uid) = ["/proc/net/tcp", "/proc/net/tcp6"]
            .iter()
            .filter_map(|table| fs::read_to_string(table).ok())
            .find_map(|table| listener(&table, port))?;
        let me = rustix::process::getuid().as_raw();
        let holders = processes_holding(&format!("socket:[{inode}]"));
        // The front and its generations all hold the socket: the front is the one whose
        // parent does not.
        let pid = holders
            .iter()
            .copied()
            .find(|pid| parent(*pid).is_none_or(|ppid| !holders.contains(&ppid)));
        let (unit, user_unit) = pid
            .and_then(|pid| fs::read_to_string(format!("/proc/{pid}/cgroup")).ok())
            .and_then(|cgroup| unit(&cgroup))
            .map_or((None, false), |(unit, user)| (Some(unit), user));
        let control_socket = pid
            .and_then(control_socket)
            .filter(|socket| Some(socket.as_path()) != ours);
        let program = pid.and_then(|pid| {
            fs::read_to_string(format!("/proc/{pid}/comm"))
                .ok()
                .map(|comm| comm.trim().to_owned())
        });
        Some(Holder {
            pid,
            program,
            user: user_name(uid).unwrap_or_else(|| uid.to_string()),
            other_user: uid != me,
            unit,
            user_unit,
            control_socket,
            looked_for: ours.map(Path::to_path_buf),
        })
    }

    /// The inode and owner of the listening socket on `port` in a `/proc/net/tcp*` table.
    pub(super) fn listener(table: &str, port: u16) -> Option<(u64, u32)> {
        table.lines().skip(1).find_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let local = fields.get(1)?;
            let state = fields.get(3)?;
            let local_port = u16::from_str_radix(local.rsplit(':').next()?, 16).ok()?;
            // 0A is TCP_LISTEN.
            if *state != "0A" || local_port != port {
                return None;
            }
            let uid = fields.get(7)?.parse().ok()?;
            let inode = fields.get(9)?.parse().ok()?;
            Some((inode, uid))
        })
    }

    /// The processes with a descriptor on `target` (`socket:[N]`), among those we may inspect.
    fn processes_holding(target: &str) -> BTreeSet<u32> {
        let mut found = BTreeSet::new();
        let Ok(procs) = fs::read_dir("/proc") else {
            return found;
        };
        for entry in procs.flatten() {
            let Some(pid) = entry
                .file_name()
                .to_str()
                .and_then(|n| n.parse::<u32>().ok())
            else {
                continue;
            };
            let Ok(fds) = fs::read_dir(entry.path().join("fd")) else {
                continue;
            };
            let holds = fds
                .flatten()
                .any(|fd| fs::read_link(fd.path()).is_ok_and(|link| link.as_os_str() == target));
            if holds {
                found.insert(pid);
            }
        }
        found
    }

    fn parent(pid: u32) -> Option<u32> {
        let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        // The command may hold spaces and parentheses: the fields follow the last ')'.
        let rest = &stat[stat.rfind(')')? + 1..];
        rest.split_whitespace().nth(1)?.parse().ok()
    }

    /// The service unit in a `/proc/PID/cgroup`, and whether a user's manager runs it.
    pub(super) fn unit(cgroup: &str) -> Option<(String, bool)> {
        // cgroup v2 ("0::/system.slice/app.service"), or v1's systemd hierarchy.
        let path = cgroup.lines().find_map(|line| {
            let mut parts = line.splitn(3, ':');
            let (id, controllers, path) = (parts.next()?, parts.next()?, parts.next()?);
            (id == "0" && controllers.is_empty() || controllers == "name=systemd").then_some(path)
        })?;
        let components: Vec<&str> = path.split('/').collect();
        let unit = components
            .iter()
            .rev()
            .find(|c| c.ends_with(".service") && !c.starts_with("user@"))?;
        let user = components.iter().any(|c| c.starts_with("user@"));
        Some(((*unit).to_owned(), user))
    }

    /// The front's control socket: a listening Unix socket of `pid` with its lock file beside
    /// it (`NAME.sock` and `NAME.lock`).
    pub(super) fn control_socket(pid: u32) -> Option<PathBuf> {
        let fds = fs::read_dir(format!("/proc/{pid}/fd")).ok()?;
        let inodes: BTreeSet<u64> = fds
            .flatten()
            .filter_map(|fd| fs::read_link(fd.path()).ok())
            .filter_map(|link| {
                let link = link.to_str()?.to_owned();
                link.strip_prefix("socket:[")?
                    .strip_suffix(']')?
                    .parse()
                    .ok()
            })
            .collect();
        let table = fs::read_to_string(format!("/proc/{pid}/net/unix")).ok()?;
        listening_unix_paths(&table)
            .into_iter()
            .filter(|(inode, _)| inodes.contains(inode))
            .map(|(_, path)| path)
            .find(|path| {
                path.extension().is_some_and(|e| e == "sock")
                    && path.with_extension("lock").exists()
            })
    }

    /// Listening Unix sockets with a path in a `/proc/net/unix` table, by inode.
    pub(super) fn listening_unix_paths(table: &str) -> HashMap<u64, PathBuf> {
        // Num RefCount Protocol Flags Type St Inode Path; flag 0x10000 is "accepting".
        table
            .lines()
            .skip(1)
            .filter_map(|line| {
                let fields: Vec<&str> = line.split_whitespace().collect();
                let flags = u32::from_str_radix(fields.get(3)?, 16).ok()?;
                let inode = fields.get(6)?.parse().ok()?;
                let path = fields.get(7)?;
                (flags & 0x10000 != 0 && path.starts_with('/'))
                    .then(|| (inode, PathBuf::from(path)))
            })
            .collect()
    }

    /// The user's name, from `/etc/passwd`.
    fn user_name(uid: u32) -> Option<String> {
        let passwd = fs::read_to_string("/etc/passwd").ok()?;
        passwd.lines().find_map(|line| {
            let mut fields = line.split(':');
            let name = fields.next()?;
            let id: u32 = fields.nth(1)?.parse().ok()?;
            (id == uid).then(|| name.to_owned())
        })
    }
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use super::linux::{listener, listening_unix_paths, unit};
    use super::{Holder, of_port};
    use std::path::PathBuf;

    #[test]
    fn a_listener_is_found_by_port_in_either_table() {
        let v4 = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n   0: 0100007F:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000   998        0 4242 1 0000000000000000 100 0 0 10 0\n   1: 0100007F:1F90 0100007F:D431 01 00000000:00000000 00:00000000 00000000  1000        0 4343 1 0000000000000000 20 4 30 10 -1\n";
        assert_eq!(listener(v4, 8080), Some((4242, 998)));
        assert_eq!(listener(v4, 8081), None);
        let v6 = "  sl  local_address                         remote_address                        st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n   0: 00000000000000000000000000000000:1F90 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 77 1 0000000000000000 100 0 0 10 0\n";
        assert_eq!(listener(v6, 8080), Some((77, 0)));
        assert_eq!(listener("", 8080), None);
        assert_eq!(listener("header\n garbage line\n", 8080), None);
    }

    #[test]
    fn the_unit_is_the_innermost_service_and_user_managers_are_told_apart() {
        assert_eq!(
            unit("0::/system.slice/app.service\n"),
            Some(("app.service".to_owned(), false))
        );
        assert_eq!(
            unit("0::/user.slice/user-1000.slice/user@1000.service/app.slice/web.service\n"),
            Some(("web.service".to_owned(), true))
        );
        assert_eq!(
            unit("12:cpuset:/\n1:name=systemd:/system.slice/app.service\n"),
            Some(("app.service".to_owned(), false))
        );
        // A login session or a container root is no unit to reload.
        assert_eq!(
            unit("0::/user.slice/user-1000.slice/session-3.scope\n"),
            None
        );
        assert_eq!(unit("0::/\n"), None);
        assert_eq!(unit(""), None);
    }

    #[test]
    fn only_listening_unix_sockets_with_a_path_count() {
        let table = "Num       RefCount Protocol Flags    Type St Inode Path\n0000000000000000: 00000002 00000000 00010000 0001 01 101 /run/app/risefront/app.sock\n0000000000000000: 00000003 00000000 00000000 0001 03 102 /run/app/risefront/app.sock\n0000000000000000: 00000002 00000000 00010000 0001 01 103 @abstract\n0000000000000000: 00000002 00000000 00010000 0001 01 104\n";
        let found = listening_unix_paths(table);
        assert_eq!(found.len(), 1, "{found:?}");
        assert_eq!(found[&101], PathBuf::from("/run/app/risefront/app.sock"));
    }

    #[test]
    fn the_advice_names_the_unit_the_directory_and_the_user() {
        let mut holder = Holder {
            pid: Some(12),
            program: Some("app".into()),
            user: "app".into(),
            other_user: false,
            unit: None,
            user_unit: false,
            control_socket: None,
            looked_for: Some("/tmp/risefront-0/app.sock".into()),
        };
        assert!(!holder.is_useful());
        holder.unit = Some("app.service".into());
        assert_eq!(
            holder.advice(),
            "upgrade it with `systemctl reload app.service`"
        );
        holder.control_socket = Some("/run/app/risefront/app.sock".into());
        holder.other_user = true;
        assert_eq!(
            holder.advice(),
            "upgrade it with `systemctl reload app.service`; or start this build as user app with RISEFRONT_DIR=/run/app/risefront (`sudo -u app env RISEFRONT_DIR=/run/app/risefront ...`)"
        );
        assert_eq!(
            holder.to_string(),
            "app (pid 12, user app), systemd unit app.service, whose risefront control socket is /run/app/risefront/app.sock"
        );
        // The same directory, another name (a build whose address list differs): the name.
        holder.unit = None;
        holder.other_user = false;
        holder.looked_for =
            Some("/run/app/risefront/app-0.0.0.0_8080_and_0.0.0.0_9090.sock".into());
        assert_eq!(holder.advice(), "start this build with RISEFRONT_NAME=app");
        holder.looked_for = None;
        assert_eq!(
            holder.advice(),
            "start this build with RISEFRONT_DIR=/run/app/risefront RISEFRONT_NAME=app"
        );
    }

    #[test]
    fn a_port_nobody_listens_on_has_no_holder() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        drop(listener);
        assert!(of_port(port, None).is_none());
    }

    #[test]
    fn our_own_listener_is_found_with_our_pid() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let (inode, uid) = ["/proc/net/tcp", "/proc/net/tcp6"]
            .iter()
            .filter_map(|t| std::fs::read_to_string(t).ok())
            .find_map(|t| super::linux::listener(&t, port))
            .expect("our listener in /proc/net/tcp");
        assert!(inode > 0);
        assert_eq!(uid, rustix::process::getuid().as_raw());
        // Nothing to advise about ourselves: same user, no control socket, no unit to reload
        // (unless the test itself runs in a service unit, which is advice worth giving).
        let holder = super::linux::of_port(port, None).expect("a holder");
        assert_eq!(holder.pid, Some(std::process::id()));
        assert!(!holder.other_user);
        assert!(holder.control_socket.is_none());
    }
}
