//! The resolved options every process of a service agrees on: defaults, environment overrides,
//! the service name, and saturating deadlines. A leaf: it imports nothing from the crate.

use std::io;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use tokio::time::Instant;

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

const MAX_NAME: usize = 64;

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
        Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!(
                "risefront: invalid service name {name:?}: use 1 to {MAX_NAME} letters, digits, '.', '_' or '-', not starting with '.'"
            ),
        ))
    }
}

/// The default service name: the program's file name and its addresses, so that an unrelated
/// program on a taken address never joins (it gets "address in use") while a new build of the
/// same program, from any path, does. `hello` on `127.0.0.1:8080` is `hello-127.0.0.1_8080`.
pub(crate) fn derive_name(program: &str, addrs: &[Named<'_>]) -> String {
    let program: String = program
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') {
                c
            } else {
                '_'
            }
        })
        .skip_while(|c| *c == '.')
        .take(20)
        .collect();
    let addrs = derive_addrs_name(addrs);
    if program.is_empty() {
        addrs
    } else {
        format!("{program}-{addrs}")
    }
}

/// This program's name as it was started: `argv[0]`'s file name (a symlink's own name, so
/// versioned installs behind one link share a service), without `.exe`.
pub(crate) fn program_name() -> String {
    let argv0 = std::env::args_os().next().unwrap_or_default();
    let path = std::path::Path::new(&argv0);
    let name = if path.file_name().is_some() {
        path.to_path_buf()
    } else {
        std::env::current_exe().unwrap_or_default()
    };
    name.file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default()
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
    // FNV-1a: stable across builds and platforms, unlike std's randomly seeded hasher.
    let hash = joined.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    });
    let prefix: String = joined
        .chars()
        .take(23)
        .map(|c| if c == '+' { '_' } else { c })
        .collect();
    format!("{prefix}-{hash:016x}")
}

/// `RISEFRONT_UPGRADE=1`: this run asks the running front for an upgrade instead of serving.
pub(crate) fn env_upgrade() -> io::Result<bool> {
    env_switch(
        "RISEFRONT_UPGRADE",
        &["1", "true", "yes", "on"],
        &["0", "false", "no", "off", ""],
        "use RISEFRONT_UPGRADE=1 to ask the running front for an upgrade",
    )
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
        Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("risefront: {var}={value:?} is not understood; {hint}"),
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
    parse(&value).map(Some).ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("risefront: {var}={value:?} is not {what}"),
        )
    })
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
        assert_eq!(
            derive_name("my app (v2)", &addrs(&["[::1]:80"])),
            "my_app__v2_-v6_0-0-0-0-0-0-0-1_80"
        );
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
