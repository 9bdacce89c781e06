//! The front's listening sockets, one per address some generation asked for: a build's
//! addresses are the service's addresses. A generation is handed exactly the sockets for the
//! addresses it gave `bind`, in its order; an address no socket serves yet is bound by the front
//! when that generation says Hello (so a build that adds a port gets it by an ordinary upgrade);
//! and a socket is closed once no generation uses it and the one serving does not want it (so
//! a build that drops a port lets it go once its predecessors have drained).

use std::collections::{BTreeMap, BTreeSet};
use std::io;

use super::machine::{Gen, PeerId};
use crate::net::{SocketFile, Target};
use crate::socket::Socket;

/// A socket's number in the registry: stable while it is open, never reused.
pub(crate) type SocketId = u64;

/// The front's sockets and who uses them.
#[derive(Default)]
pub(crate) struct Listeners {
    bound: BTreeMap<SocketId, Bound>,
    next: SocketId,
}

struct Bound {
    target: Target,
    socket: Socket,
    /// A socket file the front created for a Unix address: removed when the socket closes.
    file: Option<SocketFile>,
    /// Generations handed this socket that the front still knows of.
    users: BTreeSet<Gen>,
    /// Peers that asked for it and have not been handed it yet.
    reserved: BTreeSet<PeerId>,
}

/// What a generation's Hello asked for: the sockets to hand it, in its order.
pub(crate) type Picks = Vec<SocketId>;

impl Listeners {
    /// The sockets the front started with.
    pub(crate) fn new(initial: Vec<(Target, Socket, Option<SocketFile>)>) -> Listeners {
        let mut listeners = Listeners::default();
        for (target, socket, file) in initial {
            listeners.insert(target, socket, file);
        }
        listeners
    }

    fn insert(&mut self, target: Target, socket: Socket, file: Option<SocketFile>) -> SocketId {
        let id = self.next;
        self.next += 1;
        self.bound.insert(
            id,
            Bound {
                target,
                socket,
                file,
                users: BTreeSet::new(),
                reserved: BTreeSet::new(),
            },
        );
        id
    }

    /// The open socket serving `target`, if any: the one bound for the same address, or one
    /// listening where the address resolves (systemd passed it, or it was asked for by another
    /// spelling).
    pub(crate) fn find(&self, target: &Target) -> Option<SocketId> {
        let same = self.bound.iter().find(|(_, b)| b.target == *target);
        let serving = || {
            self.bound.iter().find(|(_, b)| {
                b.socket
                    .local_addr()
                    .is_some_and(|addr| target.matches(&addr))
            })
        };
        same.or_else(serving).map(|(id, _)| *id)
    }

    /// The addresses of `targets` that no socket serves yet.
    pub(crate) fn missing(&self, targets: &[Target]) -> Vec<Target> {
        targets
            .iter()
            .filter(|t| self.find(t).is_none())
            .cloned()
            .collect()
    }

    /// Adds sockets `peer` had bound for it, then reserves for `peer` the sockets of `targets`
    /// (each found, since everything missing was just added), so that none is closed before it
    /// is handed over. A socket bound meanwhile for the same address by another peer wins, and
    /// ours is dropped.
    pub(crate) fn reserve(
        &mut self,
        peer: PeerId,
        targets: &[Target],
        new: Vec<(Target, Socket, Option<SocketFile>)>,
    ) -> Picks {
        for (target, socket, file) in new {
            if self.find(&target).is_none() {
                tracing::info!(
                    "bound {target} for a new build: the service listens there from now on"
                );
                crate::systemd::store_listeners(std::slice::from_ref(&socket));
                self.insert(target, socket, file);
            } else if let Some(file) = file {
                file.remove();
            }
        }
        let picks: Picks = targets.iter().filter_map(|t| self.find(t)).collect();
        for id in &picks {
            if let Some(bound) = self.bound.get_mut(id) {
                bound.reserved.insert(peer);
            }
        }
        picks
    }

    /// Copies of the sockets `picks` names (every open socket when it names none: a peer that
    /// did not say its addresses gets what there is), to hand to a generation.
    pub(crate) fn copies(&self, picks: &[SocketId]) -> io::Result<Vec<Socket>> {
        if picks.is_empty() {
            return self.bound.values().map(|b| b.socket.try_clone()).collect();
        }
        picks
            .iter()
            .map(|id| match self.bound.get(id) {
                Some(b) => b.socket.try_clone(),
                None => Err(io::Error::new(
                    io::ErrorKind::NotFound,
                    "risefront: a listening socket closed before it was handed over",
                )),
            })
            .collect()
    }

    /// `generation` (on `peer`) was handed the sockets of `picks`.
    pub(crate) fn handed(&mut self, peer: PeerId, generation: Gen, picks: &[SocketId]) {
        let all: Vec<SocketId> = if picks.is_empty() {
            self.bound.keys().copied().collect()
        } else {
            picks.to_vec()
        };
        for id in all {
            if let Some(bound) = self.bound.get_mut(&id) {
                bound.reserved.remove(&peer);
                bound.users.insert(generation);
            }
        }
    }

    /// `peer` is gone: what it reserved and was not handed is free again.
    pub(crate) fn unreserve(&mut self, peer: PeerId) {
        for bound in self.bound.values_mut() {
            bound.reserved.remove(&peer);
        }
    }

    /// Closes the sockets nobody needs: no generation the front knows of (`known`) was handed
    /// it and no peer waits for it, while a generation serves (`active`), which was then not
    /// handed it either. While no generation serves (a crash, a respawn on its way) everything stays
    /// open: the next one will ask for what the last one had.
    pub(crate) fn release(&mut self, known: impl Fn(Gen) -> bool, active: Option<Gen>) {
        if active.is_none() {
            return;
        }
        for bound in self.bound.values_mut() {
            bound.users.retain(|g| known(*g));
        }
        let unused: Vec<SocketId> = self
            .bound
            .iter()
            .filter(|(_, b)| b.reserved.is_empty() && b.users.is_empty())
            .map(|(id, _)| *id)
            .collect();
        for id in unused {
            if let Some(bound) = self.bound.remove(&id) {
                tracing::info!("closed {}: no generation uses it any more", bound.target);
                bound.close();
            }
        }
    }

    /// Closes every socket: the service is stopping.
    /// Each socket with what a front's next image must know of it: its address, the
    /// generations using it and its socket file. Only at a quiet point (nothing reserved).
    #[cfg(unix)]
    pub(crate) fn carried(&self) -> Vec<(&Target, &Socket, Vec<Gen>, Option<&SocketFile>)> {
        self.bound
            .values()
            .map(|b| {
                (
                    &b.target,
                    &b.socket,
                    b.users.iter().copied().collect(),
                    b.file.as_ref(),
                )
            })
            .collect()
    }

    /// The registry a front's previous image left: [`Listeners::carried`], back.
    #[cfg(unix)]
    pub(crate) fn resumed(carried: Vec<(Target, Socket, Vec<Gen>, Option<SocketFile>)>) -> Self {
        let mut listeners = Listeners::default();
        for (target, socket, users, file) in carried {
            let id = listeners.insert(target, socket, file);
            if let Some(bound) = listeners.bound.get_mut(&id) {
                bound.users.extend(users);
            }
        }
        listeners
    }

    pub(crate) fn close_all(&mut self) {
        for (_, bound) in std::mem::take(&mut self.bound) {
            bound.close();
        }
    }

    /// Where the service listens now.
    pub(crate) fn addresses(&self) -> Vec<crate::addr::ListenAddr> {
        self.bound
            .values()
            .filter_map(|b| b.socket.local_addr())
            .collect()
    }
}

impl Bound {
    fn close(self) {
        crate::systemd::unstore_listener(&self.socket);
        if let Some(file) = &self.file {
            file.remove();
        }
    }
}

impl Listeners {
    /// Removes the socket files this front created, as it exits: they do not outlive it.
    pub(crate) fn remove_files(&self) {
        for file in self.bound.values().filter_map(|b| b.file.as_ref()) {
            file.remove();
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::{Listeners, Target};
    use crate::socket::Socket;

    fn listener() -> (Target, Socket) {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = l.local_addr().expect("addr");
        (Target::Tcp(vec![addr]), Socket::Tcp(l))
    }

    fn accepts(target: &Target) -> bool {
        match target {
            Target::Tcp(candidates) => std::net::TcpStream::connect(candidates[0]).is_ok(),
            #[cfg(unix)]
            Target::Unix(_) => unreachable!("only TCP here"),
        }
    }

    fn addrs(sockets: &[Socket]) -> Vec<String> {
        sockets
            .iter()
            .map(|s| s.local_addr().expect("addr").to_string())
            .collect()
    }

    fn two() -> (Listeners, Target, Target) {
        let (a, sa) = listener();
        let (b, sb) = listener();
        let registry = Listeners::new(vec![(a.clone(), sa, None), (b.clone(), sb, None)]);
        (registry, a, b)
    }

    #[test]
    fn a_build_gets_exactly_its_addresses_in_its_order() {
        let (mut registry, a, b) = two();
        let picks = registry.reserve(1, &[b.clone(), a.clone()], Vec::new());
        let handed = registry.copies(&picks).expect("copies");
        assert_eq!(addrs(&handed), [b.to_string(), a.to_string()]);
        let only_b = registry.reserve(2, std::slice::from_ref(&b), Vec::new());
        assert_eq!(
            addrs(&registry.copies(&only_b).expect("copies")),
            [b.to_string()]
        );
        // A peer that said nothing gets everything, as before addresses were said.
        assert_eq!(registry.copies(&[]).expect("copies").len(), 2);
    }

    #[test]
    fn new_addresses_are_those_no_socket_serves_and_are_added() {
        let (mut registry, a, _) = two();
        let (c, sc) = listener();
        let wanted = [a.clone(), c.clone()];
        assert_eq!(registry.missing(&wanted), wanted[1..]);
        let picks = registry.reserve(1, &[c.clone(), a], vec![(c.clone(), sc, None)]);
        assert_eq!(picks.len(), 2);
        assert!(registry.missing(std::slice::from_ref(&c)).is_empty());
        assert_eq!(registry.addresses().len(), 3);
    }

    #[test]
    fn a_socket_closes_once_no_generation_uses_it_while_another_serves() {
        let (mut registry, a, b) = two();
        let both = registry.reserve(1, &[a.clone(), b.clone()], Vec::new());
        registry.handed(1, 1, &both);
        let known = |gens: &'static [u64]| move |g| gens.contains(&g);
        registry.release(known(&[1]), Some(1));
        assert_eq!(registry.addresses().len(), 2, "generation 1 uses both");

        // Generation 2 asks for b only; generation 1 still drains with both.
        let only_b = registry.reserve(2, std::slice::from_ref(&b), Vec::new());
        registry.handed(2, 2, &only_b);
        registry.release(known(&[1, 2]), Some(2));
        assert_eq!(registry.addresses().len(), 2, "generation 1 still has a");

        // No generation serving (a crash): nothing closes, the next one asks again.
        registry.release(known(&[]), None);
        assert_eq!(registry.addresses().len(), 2);

        // Generation 1 gone: a closes, for real.
        registry.release(known(&[2]), Some(2));
        let left: BTreeSet<String> = registry
            .addresses()
            .iter()
            .map(ToString::to_string)
            .collect();
        assert_eq!(left, BTreeSet::from([b.to_string()]));
        assert!(!accepts(&a), "a still accepts");
    }

    #[test]
    fn a_reserved_socket_stays_until_handed_or_its_peer_is_gone() {
        let (mut registry, a, _) = two();
        let first = registry.reserve(1, std::slice::from_ref(&a), Vec::new());
        registry.handed(1, 1, &first);
        let (c, sc) = listener();
        registry.reserve(9, std::slice::from_ref(&c), vec![(c.clone(), sc, None)]);
        registry.release(|g| g == 1, Some(1));
        assert!(
            registry.find(&c).is_some(),
            "closed while a build waited for it"
        );
        registry.unreserve(9);
        registry.release(|g| g == 1, Some(1));
        assert!(registry.find(&c).is_none(), "kept after its build was gone");
    }

    /// A Unix socket with the file the front would remove, in a scratch directory.
    #[cfg(unix)]
    fn unix_listener(dir: &std::path::Path) -> (Target, Socket, Option<crate::net::SocketFile>) {
        let path = dir.join("http.sock");
        let l = std::os::unix::net::UnixListener::bind(&path).expect("bind");
        let file = crate::net::SocketFile::of(&path);
        assert!(file.is_some());
        (Target::Unix(path), Socket::Unix(l), file)
    }

    #[cfg(unix)]
    fn scratch(name: &str) -> std::path::PathBuf {
        let dir =
            std::env::temp_dir().join(format!("risefront-listeners-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("scratch");
        dir
    }

    #[cfg(unix)]
    #[test]
    fn a_closed_unix_socket_leaves_no_file() {
        let dir = scratch("closed");
        let (a, sa) = listener();
        let (u, su, file) = unix_listener(&dir);
        let path = dir.join("http.sock");
        let mut registry = Listeners::new(vec![(a.clone(), sa, None), (u, su, file)]);
        let picks = registry.reserve(1, std::slice::from_ref(&a), Vec::new());
        registry.handed(1, 1, &picks);
        registry.release(|g| g == 1, Some(1));
        assert!(!path.exists(), "the socket file outlived its socket");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[cfg(unix)]
    #[test]
    fn the_front_leaves_no_socket_file_when_it_exits() {
        let dir = scratch("exit");
        let (u, su, file) = unix_listener(&dir);
        let registry = Listeners::new(vec![(u, su, file)]);
        registry.remove_files();
        assert!(!dir.join("http.sock").exists());
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn close_all_closes_everything() {
        let (mut registry, a, _) = two();
        registry.close_all();
        assert!(registry.addresses().is_empty());
        assert!(!accepts(&a));
    }
}
