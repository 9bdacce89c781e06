//! The resolved options every process of a service agrees on: defaults, environment overrides,
//! the service name, and saturating deadlines. Nearly a leaf: it imports only the error type and
//! the operator notices.

use std::io;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use tokio::time::Instant;

use crate::error::{BindError, MAX_NAME};
use crate::notice::report;

/// What every process of a service agrees on, after environment overrides.
#[derive(Debug, Clone)]
pub(crate) struct Config {
    pub(crate) name: String,
    pub(crate) ready_timeout: Duration,
    pub(crate) drain_timeout: Duration,
    pub(crate) handshake_timeout: Duration,
    pub(crate) idle_grace: Duration,
    pub(crate) stop_delay: Duration,
    /// How long a superseded generation can be reinstated if its successor dies.
    pub(crate) probation: Duration,
    /// Over how long a draining generation spreads the closes of its keep-alive connections.
    pub(crate) close_spread: Duration,
    /// Where the control endpoint lives (Unix) or is announced (Windows), if chosen.
    pub(crate) control_dir: Option<std::path::PathBuf>,
    pub(crate) standalone: bool,
    pub(crate) manual_ready: bool,
    /// The mode of Unix socket files the front creates; `None` leaves what the umask gives.
    pub(crate) unix_mode: Option<u32>,
    /// Whether idle HTTP/1 connections move to the generation that takes over (sent by a
    /// superseded generation, taken by the new one) instead of being closed.
    pub(crate) handoff: bool,
}

/// One address as the service name shows it.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Named<'a> {
    Tcp(SocketAddr),
    // Windows has no Unix socket listeners (yet).
    #[cfg_attr(windows, allow(dead_code))]
    Unix(&'a Path),
}

/// `from + after`, saturated: a timeout of `Duration::MAX` means "never", not a panic.
pub(crate) fn deadline_after(from: Instant, after: Duration) -> Instant {
    from.checked_add(after)
        .or_else(|| from.checked_add(FAR_FUTURE))
        .unwrap_or(from)
}

/// Far enough to mean "never" for a server, near enough to be representable everywhere.
const FAR_FUTURE: Duration = Duration::from_secs(100 * 365 * 86_400);

pub(crate) fn validate_name(name: &str) -> io::Result<String> {
    let ok = !name.is_empty()
        && name.len() <= MAX_NAME
        && !name.starts_with('.')
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    if ok {
        Ok(name.to_owned())
    } else {
        Err(BindError::InvalidServiceName {
            name: name.to_owned(),
        }
        .into())
    }
}

/// The default service name: the program's file name and its addresses, so that an unrelated
/// program on a taken address never joins (it gets "address in use") while a new build of the
/// same program, from any path, does. `hello` on `127.0.0.1:8080` is `hello-127.0.0.1_8080`.
///
/// It is exact: the whole file name, extension included (`app.old` is not `app`), and a name
/// that cannot be written as is (characters a file name may not hold, or longer than
/// [`MAX_NAME`]) becomes a readable prefix and a hash of the exact program name and addresses,
/// never a truncation two programs could share. An address with port 0 asks for any free
/// port, so two such services are two services: the name then carries the front's pid.
pub(crate) fn derive_name(program: &str, addrs: &[Named<'_>]) -> String {
    derive_name_as(program, addrs, std::process::id())
}

fn derive_name_as(program: &str, addrs: &[Named<'_>], pid: u32) -> String {
    let safe: String = program
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') {
                c
            } else {
                '_'
            }
        })
        .skip_while(|c| *c == '.')
        .collect();
    let mut addrs_part = derive_addrs_name(addrs);
    if addrs
        .iter()
        .any(|addr| matches!(addr, Named::Tcp(a) if a.port() == 0))
    {
        addrs_part = format!("{addrs_part}-pid{pid}");
    }
    let readable = if safe.is_empty() {
        addrs_part
    } else {
        format!("{safe}-{addrs_part}")
    };
    if safe == program && readable.len() <= MAX_NAME {
        return readable;
    }
    let exact = program.bytes().chain([0]).chain(readable.bytes());
    let prefix: String = readable.chars().take(MAX_NAME - 17).collect();
    format!("{prefix}-{:016x}", fnv1a(exact))
}

/// FNV-1a: stable across builds and platforms, unlike std's randomly seeded hasher.
fn fnv1a(bytes: impl IntoIterator<Item = u8>) -> u64 {
    bytes.into_iter().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// This program's name as it was started: `argv[0]`'s file name (a symlink's own name, so
/// versioned installs behind one link share a service), extension included but for Windows'
/// `.exe`.
pub(crate) fn program_name() -> String {
    let argv0 = std::env::args_os().next().unwrap_or_default();
    let path = std::path::Path::new(&argv0);
    let name = if path.file_name().is_some() {
        path.to_path_buf()
    } else {
        std::env::current_exe().unwrap_or_default()
    };
    let name = name
        .file_name()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    // A Windows program runs as `app` or `app.exe` alike, whichever was typed: one name. Any
    // other extension (`app.old.exe`) stays.
    if cfg!(windows)
        && let Some(stem) = name
            .len()
            .checked_sub(4)
            .filter(|&at| name.is_char_boundary(at) && name[at..].eq_ignore_ascii_case(".exe"))
            .map(|at| name[..at].to_owned())
    {
        return stem;
    }
    name
}

/// `127.0.0.1:8080` becomes `127.0.0.1_8080`, `[::1]:80` becomes `v6_0-0-0-0-0-0-0-1_80` and
/// `unix:/run/app.sock` becomes `unix_run_app.sock`; long lists are shortened with a hash so
/// the socket path stays under the platform's limit (about 100 bytes on Unix).
pub(crate) fn derive_addrs_name(addrs: &[Named<'_>]) -> String {
    let mut parts: Vec<String> = addrs
        .iter()
        .map(|addr| match addr {
            Named::Tcp(SocketAddr::V4(a)) => format!("{}_{}", a.ip(), a.port()),
            Named::Tcp(SocketAddr::V6(a)) => {
                let segments: Vec<String> =
                    a.ip().segments().iter().map(|s| format!("{s:x}")).collect();
                format!("v6_{}_{}", segments.join("-"), a.port())
            }
            Named::Unix(path) => {
                let path: String = path
                    .to_string_lossy()
                    .chars()
                    .map(|c| {
                        if c.is_ascii_alphanumeric() || matches!(c, '.' | '-') {
                            c
                        } else {
                            '_'
                        }
                    })
                    .collect();
                format!("unix{path}")
            }
        })
        .collect();
    parts.sort();
    let joined = parts.join("+");
    if joined.len() <= 40 {
        return joined.replace('+', "_and_");
    }
    let hash = fnv1a(joined.bytes());
    let prefix: String = joined
        .chars()
        .take(23)
        .map(|c| if c == '+' { '_' } else { c })
        .collect();
    format!("{prefix}-{hash:016x}")
}

/// What `RISEFRONT_UPGRADE` asks a run to do instead of serving.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum UpgradeRequest {
    /// `1`: ask the running front for a new generation.
    Generation,
    /// `front`: ask the running front to re-execute into the serving build.
    Front,
}

/// `RISEFRONT_UPGRADE=1` or `=front`: this run asks the running front for an upgrade (of the
/// generation or of the front itself) instead of serving.
pub(crate) fn env_upgrade() -> io::Result<Option<UpgradeRequest>> {
    if std::env::var("RISEFRONT_UPGRADE").is_ok_and(|v| v.eq_ignore_ascii_case("front")) {
        return Ok(Some(UpgradeRequest::Front));
    }
    let generation = env_switch(
        "RISEFRONT_UPGRADE",
        &["1", "true", "yes", "on"],
        &["0", "false", "no", "off", ""],
        "use RISEFRONT_UPGRADE=1 to ask the running front for an upgrade, \
         RISEFRONT_UPGRADE=front for an upgrade of the front itself",
    )?;
    Ok(generation.then_some(UpgradeRequest::Generation))
}

/// `RISEFRONT=off`: bind plainly, with no front.
pub(crate) fn env_off() -> io::Result<bool> {
    env_switch(
        "RISEFRONT",
        &["off", "0", "false", "no", "standalone"],
        &["on", "1", "true", "yes", ""],
        "use RISEFRONT=off to bind plainly",
    )
}

/// `RISEFRONT_HANDOFF=off` (or `on`): whether idle connections move to the next generation;
/// `None` when unset.
pub(crate) fn env_handoff() -> io::Result<Option<bool>> {
    if std::env::var_os("RISEFRONT_HANDOFF").is_none() {
        return Ok(None);
    }
    env_switch(
        "RISEFRONT_HANDOFF",
        &["on", "1", "true", "yes"],
        &["off", "0", "false", "no"],
        "use RISEFRONT_HANDOFF=off to close idle connections at a takeover instead of moving them",
    )
    .map(Some)
}

/// A yes/no variable: `yes` values (case-insensitive) mean true, `no` values and absence
/// false, anything else is an error that ends with `hint`.
fn env_switch(var: &str, yes: &[&str], no: &[&str], hint: &str) -> io::Result<bool> {
    let Ok(value) = std::env::var(var) else {
        return Ok(false);
    };
    let lower = value.to_ascii_lowercase();
    if yes.contains(&lower.as_str()) {
        Ok(true)
    } else if no.contains(&lower.as_str()) {
        Ok(false)
    } else {
        Err(invalid_setting(
            var,
            value,
            format!("is not understood; {hint}"),
        ))
    }
}

pub(crate) fn env_duration(var: &str) -> io::Result<Option<Duration>> {
    env_parsed(
        var,
        parse_duration,
        "a duration (examples: 500ms, 30s, 2m, 1.5)",
    )
}

/// Every `RISEFRONT_*` variable the crate reads; any other one at `bind` is most likely a typo
/// and gets a warning.
pub(crate) const KNOWN_VARS: &[&str] = &[
    "RISEFRONT_UPGRADE",
    "RISEFRONT_HANDOFF",
    "RISEFRONT_UNIX_MODE",
    "RISEFRONT_DIR",
    NAME_VAR,
    READY_TIMEOUT_VAR,
    DRAIN_TIMEOUT_VAR,
    CONTROL_HANDSHAKE_TIMEOUT_VAR,
    OLD_HANDSHAKE_TIMEOUT_VAR,
    TLS_HANDSHAKE_TIMEOUT_VAR,
    "RISEFRONT_IDLE_GRACE",
    "RISEFRONT_STOP_DELAY",
    "RISEFRONT_PROBATION",
    "RISEFRONT_CLOSE_SPREAD",
    // Read by the front under systemd (`systemd::store_listeners`).
    "RISEFRONT_FDSTORE",
    // Set by the front for the generations it spawns (`handoff::CHANNEL_VAR`,
    // `handoff::STDERR_VAR` on Unix).
    "RISEFRONT_CHANNEL",
    "RISEFRONT_STDERR",
    // Set by a front for its own next image when it re-executes (`front/reexec/state.rs`).
    "RISEFRONT_FRONT_STATE",
];

pub(crate) const READY_TIMEOUT_VAR: &str = "RISEFRONT_READY_TIMEOUT";
/// The service's name, as `Builder::name` sets it.
pub(crate) const NAME_VAR: &str = "RISEFRONT_NAME";
pub(crate) const DRAIN_TIMEOUT_VAR: &str = "RISEFRONT_DRAIN_TIMEOUT";
pub(crate) const CONTROL_HANDSHAKE_TIMEOUT_VAR: &str = "RISEFRONT_CONTROL_HANDSHAKE_TIMEOUT";
/// The control handshake's variable before it was told apart from the TLS one; still read.
pub(crate) const OLD_HANDSHAKE_TIMEOUT_VAR: &str = "RISEFRONT_HANDSHAKE_TIMEOUT";
pub(crate) const TLS_HANDSHAKE_TIMEOUT_VAR: &str = "RISEFRONT_TLS_HANDSHAKE_TIMEOUT";

/// Warns about each `RISEFRONT_*` variable in this process's environment that the crate does
/// not read, naming the known one it is probably a typo of.
pub(crate) fn warn_unknown_vars() {
    let names = std::env::vars_os().map(|(name, _)| name.to_string_lossy().into_owned());
    for (name, nearest) in unknown_vars(names) {
        match nearest {
            Some(known) => report!(
                warn,
                "{name} is not a risefront setting and is ignored; did you mean {known}?"
            ),
            None => report!(
                warn,
                "{name} is not a risefront setting and is ignored (known: {})",
                KNOWN_VARS.join(", ")
            ),
        }
    }
}

/// The `RISEFRONT_*` names among `names` that are not [`KNOWN_VARS`], each with the known name
/// within two edits of it, if any.
pub(crate) fn unknown_vars(
    names: impl IntoIterator<Item = String>,
) -> Vec<(String, Option<&'static str>)> {
    let mut unknown: Vec<_> = names
        .into_iter()
        .filter(|name| name.starts_with("RISEFRONT_") && !KNOWN_VARS.contains(&name.as_str()))
        .map(|name| {
            let nearest = KNOWN_VARS
                .iter()
                .map(|known| (edit_distance(&name, known), *known))
                .filter(|(distance, _)| *distance <= 2)
                .min()
                .map(|(_, known)| known);
            (name, nearest)
        })
        .collect();
    unknown.sort();
    unknown
}

/// Levenshtein distance, by bytes (the names are ASCII).
fn edit_distance(a: &str, b: &str) -> usize {
    let b = b.as_bytes();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.bytes().enumerate() {
        let mut diagonal = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let substituted = diagonal + usize::from(ca != *cb);
            diagonal = row[j + 1];
            row[j + 1] = substituted.min(row[j] + 1).min(diagonal + 1);
        }
    }
    row[b.len()]
}

/// A timeout that zero would make fail every time: `var` if set, else `code` as set by
/// `method`. Zero from either is refused, and the error says `what` zero would break.
pub(crate) fn nonzero_timeout(
    var: &str,
    method: &str,
    code: Duration,
    what: &str,
) -> io::Result<Duration> {
    let (setting, timeout) = match env_duration(var)? {
        Some(timeout) => (var, timeout),
        None => (method, code),
    };
    if !timeout.is_zero() {
        return Ok(timeout);
    }
    let shown = match std::env::var(var) {
        Ok(value) if setting == var => value,
        _ => format!("{timeout:?}"),
    };
    Err(invalid_setting(
        setting,
        shown,
        format!("is zero, so {what}; use a positive duration (examples: 500ms, 30s, 2m)"),
    ))
}

/// The variable that sets the control handshake timeout: the new name, or the old one with a
/// warning.
pub(crate) fn control_handshake_var() -> &'static str {
    if std::env::var_os(OLD_HANDSHAKE_TIMEOUT_VAR).is_none() {
        return CONTROL_HANDSHAKE_TIMEOUT_VAR;
    }
    if std::env::var_os(CONTROL_HANDSHAKE_TIMEOUT_VAR).is_some() {
        report!(
            warn,
            "{OLD_HANDSHAKE_TIMEOUT_VAR} is ignored: {CONTROL_HANDSHAKE_TIMEOUT_VAR} is set too"
        );
        return CONTROL_HANDSHAKE_TIMEOUT_VAR;
    }
    report!(
        warn,
        "{OLD_HANDSHAKE_TIMEOUT_VAR} is deprecated: rename it {CONTROL_HANDSHAKE_TIMEOUT_VAR} (the TLS handshake has its own, {TLS_HANDSHAKE_TIMEOUT_VAR})"
    );
    OLD_HANDSHAKE_TIMEOUT_VAR
}

/// `RISEFRONT_TLS_HANDSHAKE_TIMEOUT`, if set: checked at `bind` (so that a bad value stops the
/// start, as the other variables do), read by `TlsListener`.
pub(crate) fn env_tls_handshake_timeout() -> io::Result<Option<Duration>> {
    if std::env::var_os(TLS_HANDSHAKE_TIMEOUT_VAR).is_none() {
        return Ok(None);
    }
    nonzero_timeout(
        TLS_HANDSHAKE_TIMEOUT_VAR,
        "TlsListener::tls_handshake_timeout",
        Duration::ZERO,
        "every TLS handshake would time out",
    )
    .map(Some)
}

/// `var` parsed by `parse` if set; an error that names the variable and says what `what` it
/// should be if it does not parse.
fn env_parsed<T>(
    var: &str,
    parse: impl FnOnce(&str) -> Option<T>,
    what: &str,
) -> io::Result<Option<T>> {
    let Ok(value) = std::env::var(var) else {
        return Ok(None);
    };
    match parse(&value) {
        Some(parsed) => Ok(Some(parsed)),
        None => Err(invalid_setting(var, value, format!("is not {what}"))),
    }
}

/// `setting` (a variable or a `Builder` method) refused with `value`, and why.
pub(crate) fn invalid_setting(setting: &str, value: String, reason: String) -> io::Error {
    BindError::InvalidSetting {
        setting: setting.to_owned(),
        value,
        reason,
    }
    .into()
}

/// `RISEFRONT_UNIX_MODE`: the socket files' mode, in octal (`660`, `0660` or `0o660`).
pub(crate) fn env_unix_mode() -> io::Result<Option<u32>> {
    env_parsed(
        "RISEFRONT_UNIX_MODE",
        parse_mode,
        "a file mode in octal (examples: 660, 0600)",
    )
}

pub(crate) fn parse_mode(s: &str) -> Option<u32> {
    let s = s.trim();
    let digits = s.strip_prefix("0o").unwrap_or(s);
    if digits.is_empty() || digits.len() > 5 {
        return None;
    }
    u32::from_str_radix(digits, 8)
        .ok()
        .filter(|mode| *mode <= 0o7777)
}

pub(crate) fn parse_duration(s: &str) -> Option<Duration> {
    let s = s.trim();
    let (number, unit) = match s.find(|c: char| c.is_ascii_alphabetic()) {
        Some(i) => s.split_at(i),
        None => (s, "s"),
    };
    let n: f64 = number.trim().parse().ok()?;
    let secs = match unit.trim() {
        "ms" => n / 1000.0,
        "s" => n,
        "m" => n * 60.0,
        _ => return None,
    };
    Duration::try_from_secs_f64(secs).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addrs<'a>(list: &[&'a str]) -> Vec<Named<'a>> {
        list.iter()
            .map(|a| match a.strip_prefix("unix:") {
                Some(path) => Named::Unix(Path::new(path)),
                None => Named::Tcp(a.parse().unwrap()),
            })
            .collect()
    }

    #[test]
    fn unix_modes_are_octal_and_bounded() {
        assert_eq!(parse_mode("660"), Some(0o660));
        assert_eq!(parse_mode(" 0600 "), Some(0o600));
        assert_eq!(parse_mode("0o2770"), Some(0o2770));
        for bad in [
            "",
            "0o",
            "rw-rw----",
            "680",
            "-1",
            "17777",
            "0x1ff",
            "0777777",
        ] {
            assert_eq!(parse_mode(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn derived_names_are_sorted_and_file_safe() {
        assert_eq!(
            derive_name("hello", &addrs(&["127.0.0.1:8080"])),
            "hello-127.0.0.1_8080"
        );
        assert_eq!(
            derive_name("app", &addrs(&["127.0.0.2:1", "127.0.0.1:2"])),
            derive_name("app", &addrs(&["127.0.0.1:2", "127.0.0.2:1"]))
        );
        assert_eq!(
            derive_name("", &addrs(&["[::1]:80"])),
            "v6_0-0-0-0-0-0-0-1_80"
        );
        // Not a file name as is: readable, but hashed, so `my_app__v2_` stays another program.
        let spaced = derive_name("my app (v2)", &addrs(&["[::1]:80"]));
        assert!(
            spaced.starts_with("my_app__v2_-v6_0-0-0-0-0-0-0-1_80-"),
            "{spaced}"
        );
        assert_ne!(spaced, derive_name("my_app__v2_", &addrs(&["[::1]:80"])));
        assert!(validate_name(&spaced).is_ok());
        assert_eq!(
            derive_name(
                "hello",
                &addrs(&["unix:/run/app/http.sock", "127.0.0.1:8080"])
            ),
            "hello-127.0.0.1_8080_and_unix_run_app_http.sock"
        );
        assert_ne!(
            derive_name("a", &addrs(&["127.0.0.1:80"])),
            derive_name("b", &addrs(&["127.0.0.1:80"]))
        );
        let long = derive_name(
            &"x".repeat(300),
            &addrs(&["[2001:db8::1]:8080", "[2001:db8::2]:8080", "10.0.0.1:1"]),
        );
        assert!(long.len() <= MAX_NAME, "{long}");
        assert!(validate_name(&long).is_ok());
    }

    #[test]
    fn a_derived_name_is_never_shared_by_two_programs() {
        let on = addrs(&["127.0.0.1:8080"]);
        // No truncation: these used to be one service.
        let names = [
            "payments-service-api",
            "payments-service-api-canary",
            "payments-service-api.old",
            "payments-service-api-canary-but-with-a-very-long-suffix-1",
            "payments-service-api-canary-but-with-a-very-long-suffix-2",
        ]
        .map(|program| derive_name(program, &on));
        for (i, a) in names.iter().enumerate() {
            assert!(a.len() <= MAX_NAME && validate_name(a).is_ok(), "{a}");
            for b in &names[i + 1..] {
                assert_ne!(a, b);
            }
        }
        assert_eq!(names[1], "payments-service-api-canary-127.0.0.1_8080");
        // A new build of the same program, from any path, is the same service.
        assert_eq!(derive_name("app", &on), derive_name("app", &on));
    }

    #[test]
    fn port_0_is_a_service_of_its_own() {
        let any = addrs(&["127.0.0.1:0"]);
        assert_eq!(derive_name_as("app", &any, 42), "app-127.0.0.1_0-pid42");
        assert_ne!(
            derive_name_as("app", &any, 42),
            derive_name_as("app", &any, 43)
        );
        // A fixed port does not depend on the process.
        let fixed = addrs(&["127.0.0.1:80"]);
        assert_eq!(
            derive_name_as("app", &fixed, 42),
            derive_name_as("app", &fixed, 43)
        );
    }

    #[test]
    fn names_are_validated() {
        assert!(validate_name("api-v2.internal_1").is_ok());
        for bad in ["", "../x", "a/b", ".hidden", "sp ace", &"x".repeat(65)] {
            assert!(validate_name(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn deadlines_saturate() {
        let now = Instant::now();
        assert!(deadline_after(now, Duration::MAX) > now + Duration::from_secs(86_400 * 365));
        assert_eq!(
            deadline_after(now, Duration::from_secs(1)),
            now + Duration::from_secs(1)
        );
    }

    #[test]
    fn unknown_variables_are_named_with_the_nearest_known_one() {
        let names = [
            "RISEFRONT_REDY_TIMEOUT",
            "RISEFRONT_READY_TIMEOUT",
            "RISEFRONT_DIRR",
            "RISEFRONT_COLOUR",
            "RISEFRONT",
            "PATH",
            "RISEFRONT_CHANNEL",
        ]
        .map(String::from);
        assert_eq!(
            unknown_vars(names),
            vec![
                ("RISEFRONT_COLOUR".to_owned(), None),
                ("RISEFRONT_DIRR".to_owned(), Some("RISEFRONT_DIR")),
                (
                    "RISEFRONT_REDY_TIMEOUT".to_owned(),
                    Some("RISEFRONT_READY_TIMEOUT")
                ),
            ]
        );
    }

    #[test]
    fn edit_distances() {
        assert_eq!(edit_distance("", ""), 0);
        assert_eq!(edit_distance("abc", "abc"), 0);
        assert_eq!(edit_distance("abc", ""), 3);
        assert_eq!(edit_distance("kitten", "sitting"), 3);
        assert_eq!(edit_distance("RISEFRONT_DIR", "RISEFRONT_DRI"), 2);
    }

    #[test]
    fn a_zero_timeout_set_in_code_is_refused_with_its_method() {
        // No test sets this variable, so the value in code is what counts.
        let var = "RISEFRONT_TEST_NEVER_SET";
        let e =
            nonzero_timeout(var, "Builder::ready_timeout", Duration::ZERO, "x").expect_err("zero");
        assert_eq!(e.kind(), io::ErrorKind::InvalidInput);
        let inner = e.get_ref().and_then(|e| e.downcast_ref::<BindError>());
        assert!(
            matches!(inner, Some(BindError::InvalidSetting { setting, .. }) if setting == "Builder::ready_timeout"),
            "{e:?}"
        );
        assert_eq!(
            nonzero_timeout(var, "m", Duration::from_millis(1), "x").expect("positive"),
            Duration::from_millis(1)
        );
    }

    #[test]
    fn durations_parse() {
        assert_eq!(parse_duration("500ms"), Some(Duration::from_millis(500)));
        assert_eq!(parse_duration("2s"), Some(Duration::from_secs(2)));
        assert_eq!(parse_duration("1.5"), Some(Duration::from_millis(1500)));
        assert_eq!(parse_duration("2m"), Some(Duration::from_secs(120)));
        for bad in ["", "x", "-1", "5h", "1e400"] {
            assert_eq!(parse_duration(bad), None, "{bad:?}");
        }
    }
}
