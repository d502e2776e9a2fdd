//! The terminal: raw mode (restored on drop), its size, bracketed paste,
//! decoding keys from stdin, and signals, each on a thread that blocks
//! until something happens (no polling while idle).

use std::io::Write;
use std::os::fd::RawFd;
use std::time::Duration;

const STDIN: RawFd = 0;
const STDOUT: RawFd = 1;

/// Raw mode and bracketed paste while alive; the saved settings come back
/// on drop.
pub struct Terminal {
    saved: Option<libc::termios>,
}

impl Terminal {
    /// Enters raw mode when stdin is a terminal (otherwise only writes).
    pub fn enter() -> Terminal {
        // SAFETY: tcgetattr/tcsetattr get a valid fd and a termios we own.
        let saved = unsafe {
            let mut t: libc::termios = std::mem::zeroed();
            if libc::tcgetattr(STDIN, &mut t) != 0 {
                None
            } else {
                let mut raw = t;
                libc::cfmakeraw(&mut raw);
                raw.c_cc[libc::VMIN] = 1;
                raw.c_cc[libc::VTIME] = 0;
                (libc::tcsetattr(STDIN, libc::TCSANOW, &raw) == 0).then_some(t)
            }
        };
        write_out(b"\x1b[?2004h");
        Terminal { saved }
    }

    /// Leaves raw mode now (idempotent).
    pub fn restore(&mut self) {
        if let Some(t) = self.saved.take() {
            write_out(b"\x1b[?2004l\x1b[?25h");
            // SAFETY: as in `enter`.
            unsafe {
                libc::tcsetattr(STDIN, libc::TCSANOW, &t);
            }
        }
    }
}

impl Drop for Terminal {
    fn drop(&mut self) {
        self.restore();
    }
}

/// Writes to the terminal, ignoring a terminal that went away.
pub fn write_out(data: &[u8]) {
    let mut out = std::io::stdout().lock();
    let _ = out.write_all(data);
    let _ = out.flush();
}

/// Waits (briefly) until the terminal has read everything written to it:
/// tmux drops the last output of a pane whose process is already gone.
fn settle() {
    let deadline = std::time::Instant::now() + Duration::from_millis(500);
    for fd in [STDOUT, 2] {
        loop {
            let mut queued: libc::c_int = 0;
            // SAFETY: TIOCOUTQ writes one int.
            let ok = unsafe { libc::ioctl(fd, libc::TIOCOUTQ, &mut queued) } == 0;
            if !ok || queued == 0 || std::time::Instant::now() >= deadline {
                break;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}

/// (columns, rows), 80x24 when unknown.
pub fn size() -> (usize, usize) {
    // SAFETY: TIOCGWINSZ fills the winsize we pass.
    let ws = unsafe {
        let mut ws: libc::winsize = std::mem::zeroed();
        let ok = libc::ioctl(STDOUT, libc::TIOCGWINSZ, &mut ws) == 0
            || libc::ioctl(STDIN, libc::TIOCGWINSZ, &mut ws) == 0;
        ok.then_some(ws)
    };
    match ws {
        Some(ws) if ws.ws_col > 0 && ws.ws_row > 0 => (ws.ws_col as usize, ws.ws_row as usize),
        _ => (80, 24),
    }
}

/// One key, or the end of the input.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Key {
    Char(char),
    /// Bracketed paste: line feeds are part of the text.
    Paste(String),
    Enter,
    Esc,
    Backspace,
    Up,
    Down,
    CtrlC,
    CtrlD,
    CtrlU,
    /// stdin reached its end (the terminal is gone).
    Closed,
}

const PASTE_START: &[u8] = b"\x1b[200~";
const PASTE_END: &[u8] = b"\x1b[201~";

/// Turns the byte stream into keys. Bytes of an incomplete sequence are
/// kept for the next call.
#[derive(Default)]
pub struct Decoder {
    buf: Vec<u8>,
    paste: Option<Vec<u8>>,
}

fn paste_text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes)
        .replace("\r\n", "\n")
        .replace('\r', "\n")
}

impl Decoder {
    pub fn feed(&mut self, data: &[u8]) -> Vec<Key> {
        self.buf.extend_from_slice(data);
        let mut keys = Vec::new();
        let mut pos = 0;
        while pos < self.buf.len() {
            let rest = &self.buf[pos..];
            if let Some(p) = self.paste.as_mut() {
                if let Some(end) = find(rest, PASTE_END) {
                    p.extend_from_slice(&rest[..end]);
                    keys.push(Key::Paste(paste_text(p)));
                    self.paste = None;
                    pos += end + PASTE_END.len();
                    continue;
                }
                // Keep a possible beginning of the end marker.
                let keep = (1..PASTE_END.len())
                    .rev()
                    .find(|k| rest.len() >= *k && PASTE_END.starts_with(&rest[rest.len() - k..]))
                    .unwrap_or(0);
                p.extend_from_slice(&rest[..rest.len() - keep]);
                pos = self.buf.len() - keep;
                break;
            }
            let b = rest[0];
            let used = match b {
                0x1b => match escape(rest) {
                    Some((n, Esc::PasteStart)) => {
                        self.paste = Some(Vec::new());
                        n
                    }
                    Some((n, Esc::Key(key))) => {
                        keys.extend(key);
                        n
                    }
                    None => break, // incomplete
                },
                b'\r' | b'\n' => {
                    keys.push(Key::Enter);
                    1
                }
                0x7f | 0x08 => {
                    keys.push(Key::Backspace);
                    1
                }
                0x03 => {
                    keys.push(Key::CtrlC);
                    1
                }
                0x04 => {
                    keys.push(Key::CtrlD);
                    1
                }
                0x15 => {
                    keys.push(Key::CtrlU);
                    1
                }
                b'\t' => {
                    keys.push(Key::Char('\t'));
                    1
                }
                0..0x20 => 1,
                _ => {
                    let len = match b {
                        0xc0..0xe0 => 2,
                        0xe0..0xf0 => 3,
                        0xf0..0xf8 => 4,
                        _ => 1,
                    };
                    if rest.len() < len {
                        break;
                    }
                    match std::str::from_utf8(&rest[..len]) {
                        Ok(s) => {
                            keys.extend(s.chars().map(Key::Char));
                            len
                        }
                        Err(_) => 1,
                    }
                }
            };
            pos += used;
            if pos >= self.buf.len() {
                break;
            }
        }
        self.buf.drain(..pos.min(self.buf.len()));
        keys
    }

    /// A lone ESC waits for what may follow; after a short silence it is
    /// the Escape key.
    pub fn pending_escape(&self) -> bool {
        self.paste.is_none() && self.buf.first() == Some(&0x1b)
    }

    /// Gives up on an incomplete sequence (after the silence).
    pub fn flush(&mut self) -> Vec<Key> {
        if self.buf == [0x1b] {
            self.buf.clear();
            return vec![Key::Esc];
        }
        if self.pending_escape() {
            self.buf.clear();
        }
        Vec::new()
    }
}

enum Esc {
    PasteStart,
    Key(Option<Key>),
}

/// An escape sequence at the start of `rest`: bytes used and what it
/// means, or None when more bytes are needed.
fn escape(rest: &[u8]) -> Option<(usize, Esc)> {
    let next = *rest.get(1)?;
    let arrow = |b: u8| match b {
        b'A' => Some(Key::Up),
        b'B' => Some(Key::Down),
        _ => None,
    };
    Some(match next {
        b'[' => {
            // CSI: parameters and intermediates, then a final byte.
            let end = rest[2..].iter().position(|b| (0x40..=0x7e).contains(b))? + 2;
            if &rest[..=end] == PASTE_START {
                (end + 1, Esc::PasteStart)
            } else {
                (end + 1, Esc::Key(arrow(rest[end])))
            }
        }
        b'O' => (3, Esc::Key(arrow(*rest.get(2)?))),
        // ESC ESC: the first one is a key of its own.
        0x1b => (1, Esc::Key(Some(Key::Esc))),
        // Alt+key: the key alone.
        _ => (1, Esc::Key(None)),
    })
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// Waits up to `t` (forever: None) for stdin or `stop` to become
/// readable; true when stdin is.
fn wait_input(stop: RawFd, t: Option<Duration>) -> bool {
    let mut p = [
        libc::pollfd {
            fd: STDIN,
            events: libc::POLLIN,
            revents: 0,
        },
        libc::pollfd {
            fd: stop,
            events: libc::POLLIN,
            revents: 0,
        },
    ];
    let ms = t.map(|t| t.as_millis() as i32).unwrap_or(-1);
    loop {
        // SAFETY: two valid pollfds.
        let r = unsafe { libc::poll(p.as_mut_ptr(), 2, ms) };
        if r < 0 && std::io::Error::last_os_error().kind() == std::io::ErrorKind::Interrupted {
            continue;
        }
        return r > 0 && p[1].revents == 0 && p[0].revents != 0;
    }
}

/// The input thread; [`Reader::stop`] ends it, so that nothing holds the
/// terminal any more.
pub struct Reader {
    stop_tx: RawFd,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Reader {
    pub fn stop(&mut self) {
        // SAFETY: writing one byte to our own pipe.
        unsafe {
            libc::write(self.stop_tx, b"x".as_ptr().cast(), 1);
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Reads stdin on its own thread, blocked in `poll` while nothing comes,
/// and hands every key to `on_key` (which returns false to stop).
pub fn spawn_reader(on_key: impl Fn(Key) -> bool + Send + 'static) -> Reader {
    let mut fds = [0 as RawFd; 2];
    // SAFETY: pipe2 fills two fds.
    unsafe {
        libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC);
    }
    let stop_rx = fds[0];
    let thread = std::thread::Builder::new()
        .name("sim-input".into())
        .stack_size(128 * 1024)
        .spawn(move || {
            let mut d = Decoder::default();
            let mut buf = [0u8; 4096];
            loop {
                if !wait_input(stop_rx, None) {
                    return;
                }
                // SAFETY: reading into a buffer we own, within its length.
                let n = unsafe { libc::read(STDIN, buf.as_mut_ptr().cast(), buf.len()) };
                if n < 0
                    && std::io::Error::last_os_error().kind() == std::io::ErrorKind::Interrupted
                {
                    continue;
                }
                if n <= 0 {
                    on_key(Key::Closed);
                    return;
                }
                let mut keys = d.feed(&buf[..n as usize]);
                if d.pending_escape() && !wait_input(stop_rx, Some(Duration::from_millis(30))) {
                    keys.extend(d.flush());
                }
                for k in keys {
                    if !on_key(k) {
                        return;
                    }
                }
            }
        })
        .ok();
    Reader {
        stop_tx: fds[1],
        thread,
    }
}

/// Lets go of the terminal before the process exits: stdin, stdout and
/// stderr become /dev/null, then a short pause. tmux (3.3a, built with
/// utempter) handles the terminal's end by running a helper with SIGCHLD
/// set to default; an exit landing in that window is never reaped and the
/// pane keeps no exit status. Closing the terminal first moves that
/// window well before the exit.
pub fn release() {
    settle();
    if let Ok(null) = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/null")
    {
        use std::os::fd::AsRawFd;
        for fd in [STDIN, STDOUT, 2] {
            // SAFETY: both descriptors are open.
            unsafe {
                libc::dup2(null.as_raw_fd(), fd);
            }
        }
    }
    std::thread::sleep(Duration::from_millis(200));
}

/// The signals the agent handles itself.
pub const SIGNALS: &[i32] = &[libc::SIGTERM, libc::SIGHUP, libc::SIGINT, libc::SIGWINCH];

fn sigset() -> libc::sigset_t {
    // SAFETY: sigemptyset/sigaddset initialise the set we own.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        for s in SIGNALS {
            libc::sigaddset(&mut set, *s);
        }
        set
    }
}

/// Blocks [`SIGNALS`] in this thread and every thread it starts later
/// (call before starting any thread); [`spawn_signal_waiter`] receives
/// them. Child processes get a clean mask from `std::process::Command`.
pub fn block_signals() {
    let set = sigset();
    // SAFETY: a valid, initialised set.
    unsafe {
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
    }
}

/// Waits for the blocked signals on a thread and hands each to `on_signal`.
pub fn spawn_signal_waiter(on_signal: impl Fn(i32) -> bool + Send + 'static) {
    let _ = std::thread::Builder::new()
        .name("sim-signals".into())
        .stack_size(64 * 1024)
        .spawn(move || {
            let set = sigset();
            loop {
                let mut sig = 0;
                // SAFETY: a valid set; sig is written by sigwait.
                if unsafe { libc::sigwait(&set, &mut sig) } != 0 {
                    continue;
                }
                if !on_signal(sig) {
                    return;
                }
            }
        });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_paste_and_split_sequences() {
        let mut d = Decoder::default();
        assert_eq!(
            d.feed("hé\r".as_bytes()),
            [Key::Char('h'), Key::Char('é'), Key::Enter]
        );
        // a paste split anywhere, with CR LF and the end marker cut in two
        let mut keys = d.feed(b"x\x1b[20");
        keys.extend(d.feed(b"0~line one\r\nline two\nthree\x1b[2"));
        keys.extend(d.feed(b"01~\r"));
        assert_eq!(
            keys,
            [
                Key::Char('x'),
                Key::Paste("line one\nline two\nthree".into()),
                Key::Enter
            ]
        );
        // a multi-byte character split across reads
        let bytes = "❯".as_bytes();
        assert!(d.feed(&bytes[..1]).is_empty());
        assert_eq!(d.feed(&bytes[1..]), [Key::Char('❯')]);
        // a lone ESC waits, then is the Escape key
        assert!(d.feed(b"\x1b").is_empty());
        assert!(d.pending_escape());
        assert_eq!(d.flush(), [Key::Esc]);
        assert_eq!(d.feed(b"\x1b[A\x1b[B\x1b[1;5C"), [Key::Up, Key::Down]);
        assert_eq!(
            d.feed(b"\x03\x04\x15\x7f"),
            [Key::CtrlC, Key::CtrlD, Key::CtrlU, Key::Backspace]
        );
        assert_eq!(d.feed(b"\x1b\x1b"), [Key::Esc]);
        assert_eq!(d.flush(), [Key::Esc]);
    }
}
