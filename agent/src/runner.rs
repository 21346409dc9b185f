//! Running one program: [`CommandRunner`] is the one way the agent starts a process, with a
//! timeout and its output streamed line by line. [`SystemRunner`] runs it for real;
//! [`testing::RecordingRunner`] records calls and runs nothing. The executor runs its
//! node-changing command lines through it, and the live probes their read-only queries.

use std::io::{BufRead, BufReader, Read};
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::thread;
use std::time::{Duration, Instant};

/// How much output a run keeps, and an action outcome carries (the tail is kept).
pub const OUTPUT_MAX: usize = 64 * 1024;
/// Longest output line passed on; longer lines are split.
const MAX_LINE: u64 = 8 * 1024;

/// What running one command gave.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RunResult {
    /// `None`: killed (timeout or signal) or never started.
    pub exit_code: Option<i32>,
    pub timed_out: bool,
    /// The tail of the merged stdout and stderr.
    pub output: String,
    /// The program could not be started.
    pub spawn_error: Option<String>,
}

impl RunResult {
    pub fn success(&self) -> bool {
        self.exit_code == Some(0) && !self.timed_out && self.spawn_error.is_none()
    }

    /// An exit status with output, as a test script would give it.
    pub fn exited(code: i32, output: &str) -> Self {
        RunResult {
            exit_code: Some(code),
            output: output.to_owned(),
            ..Default::default()
        }
    }
}

/// Runs one program: `args` as `argv`, `env` added to the inherited environment, killed
/// after `timeout`, output lines passed to `out` as they appear. Never panics.
pub trait CommandRunner: Send + Sync {
    fn run(
        &self,
        program: &str,
        args: &[String],
        env: &[(String, String)],
        timeout: Duration,
        out: &mut dyn FnMut(&str),
    ) -> RunResult;
}

/// Runs commands with `std::process::Command`: stdin from `/dev/null`, stdout and stderr
/// merged line by line (one reader thread each), in a process group of its own so that on
/// timeout the whole group gets `SIGKILL`.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemRunner;

fn spawn_reader<R: Read + Send + 'static>(pipe: R, tx: mpsc::Sender<String>) {
    thread::spawn(move || {
        let mut reader = BufReader::new(pipe);
        let mut buf = Vec::new();
        loop {
            buf.clear();
            match reader.by_ref().take(MAX_LINE).read_until(b'\n', &mut buf) {
                Ok(0) | Err(_) => break,
                Ok(_) => {
                    while buf.last().is_some_and(|b| *b == b'\n' || *b == b'\r') {
                        buf.pop();
                    }
                    if tx.send(String::from_utf8_lossy(&buf).into_owned()).is_err() {
                        break;
                    }
                }
            }
        }
    });
}

fn kill_group(child: &mut Child) {
    if let Ok(pid) = i32::try_from(child.id()) {
        // The child leads its own process group (`process_group(0)`), so this reaches
        // everything it started unless that moved to another group.
        let _ = nix::sys::signal::killpg(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGKILL,
        );
    }
    let _ = child.kill();
}

impl CommandRunner for SystemRunner {
    fn run(
        &self,
        program: &str,
        args: &[String],
        env: &[(String, String)],
        timeout: Duration,
        out: &mut dyn FnMut(&str),
    ) -> RunResult {
        let start = Instant::now();
        let deadline = start.checked_add(timeout);
        let mut child = match Command::new(program)
            .args(args)
            .envs(env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0)
            .spawn()
        {
            Ok(c) => c,
            Err(e) => {
                return RunResult {
                    spawn_error: Some(format!("cannot start {program}: {e}")),
                    ..Default::default()
                }
            }
        };
        let (tx, rx) = mpsc::channel();
        if let Some(p) = child.stdout.take() {
            spawn_reader(p, tx.clone());
        }
        if let Some(p) = child.stderr.take() {
            spawn_reader(p, tx.clone());
        }
        drop(tx);

        let mut tail = OutputTail::new(OUTPUT_MAX - 256);
        let mut timed_out = false;
        let mut status = None;
        // After the child exited, its pipes may stay open in a process it left behind:
        // drain for at most this long, then stop listening.
        let mut drain_until: Option<Instant> = None;
        loop {
            let now = Instant::now();
            if status.is_none() && deadline.is_some_and(|d| now >= d) {
                timed_out = true;
                break;
            }
            if drain_until.is_some_and(|d| now >= d) {
                break;
            }
            let mut wait = Duration::from_millis(100);
            if let Some(d) = deadline {
                wait = wait.min(d.saturating_duration_since(now));
            }
            match rx.recv_timeout(wait) {
                Ok(line) => {
                    out(&line);
                    tail.push_line(&line);
                }
                Err(RecvTimeoutError::Disconnected) => {
                    if status.is_some() {
                        break;
                    }
                    // Both pipes closed: wait for the exit (still under the deadline).
                    match child.try_wait() {
                        Ok(Some(s)) => {
                            status = Some(s);
                            break;
                        }
                        Ok(None) => thread::sleep(wait.min(Duration::from_millis(20))),
                        Err(_) => break,
                    }
                }
                Err(RecvTimeoutError::Timeout) => {}
            }
            if status.is_none() {
                if let Ok(Some(s)) = child.try_wait() {
                    status = Some(s);
                    drain_until = Some(Instant::now() + Duration::from_secs(1));
                }
            }
        }
        if timed_out {
            kill_group(&mut child);
            let note = format!("[killed after {}s: timeout]", start.elapsed().as_secs());
            let _ = child.wait();
            // The group is dead, so its pipes close; keep what is still buffered.
            let until = Instant::now() + Duration::from_millis(500);
            while let Ok(line) = rx.recv_timeout(until.saturating_duration_since(Instant::now())) {
                out(&line);
                tail.push_line(&line);
            }
            out(&note);
            tail.push_line(&note);
            return RunResult {
                exit_code: None,
                timed_out: true,
                output: tail.finish(),
                spawn_error: None,
            };
        }
        let status = match status {
            Some(s) => Some(s),
            None => child.wait().ok(),
        };
        RunResult {
            exit_code: status.and_then(|s| s.code()),
            timed_out: false,
            output: tail.finish(),
            spawn_error: None,
        }
    }
}

/// The last `max` bytes of `s` (cut at a character boundary), with a note of what was cut.
pub fn tail(s: String, max: usize) -> String {
    if s.len() <= max {
        return s;
    }
    let mut start = s.len() - max;
    while !s.is_char_boundary(start) {
        start += 1;
    }
    format!("[... {start} bytes cut ...]\n{}", &s[start..])
}

/// Collects output lines, keeping roughly the last `max` bytes.
#[derive(Debug, Clone)]
pub struct OutputTail {
    max: usize,
    buf: String,
    cut: usize,
}

impl OutputTail {
    pub fn new(max: usize) -> Self {
        OutputTail {
            max,
            buf: String::new(),
            cut: 0,
        }
    }

    pub fn push_line(&mut self, line: &str) {
        self.buf.push_str(line);
        self.buf.push('\n');
        if self.buf.len() > self.max.saturating_mul(2).max(1024) {
            let mut start = self.buf.len() - self.max;
            while !self.buf.is_char_boundary(start) {
                start += 1;
            }
            self.cut += start;
            self.buf.drain(..start);
        }
    }

    pub fn finish(mut self) -> String {
        if self.buf.len() > self.max {
            let mut start = self.buf.len() - self.max;
            while !self.buf.is_char_boundary(start) {
                start += 1;
            }
            self.cut += start;
            self.buf.drain(..start);
        }
        if self.cut > 0 {
            format!("[... {} bytes cut ...]\n{}", self.cut, self.buf)
        } else {
            self.buf
        }
    }
}

/// A [`CommandRunner`] for tests: records every call and returns scripted results (exit 0
/// with no output once the script is used up). Runs nothing.
pub mod testing {
    use super::{CommandRunner, RunResult};
    use std::collections::VecDeque;
    use std::sync::Mutex;
    use std::time::Duration;

    /// One recorded call.
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub struct Call {
        pub program: String,
        pub args: Vec<String>,
        pub env: Vec<(String, String)>,
        pub timeout: Duration,
    }

    #[derive(Debug, Default)]
    pub struct RecordingRunner {
        calls: Mutex<Vec<Call>>,
        script: Mutex<VecDeque<RunResult>>,
    }

    impl RecordingRunner {
        pub fn new() -> Self {
            Self::default()
        }

        /// Results for the next calls, in order.
        pub fn script(&self, results: impl IntoIterator<Item = RunResult>) {
            self.script
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .extend(results);
        }

        /// Every call so far.
        pub fn calls(&self) -> Vec<Call> {
            self.calls.lock().unwrap_or_else(|p| p.into_inner()).clone()
        }

        /// Forgets the recorded calls.
        pub fn take_calls(&self) -> Vec<Call> {
            std::mem::take(&mut *self.calls.lock().unwrap_or_else(|p| p.into_inner()))
        }
    }

    impl CommandRunner for RecordingRunner {
        fn run(
            &self,
            program: &str,
            args: &[String],
            env: &[(String, String)],
            timeout: Duration,
            out: &mut dyn FnMut(&str),
        ) -> RunResult {
            self.calls
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .push(Call {
                    program: program.to_owned(),
                    args: args.to_vec(),
                    env: env.to_vec(),
                    timeout,
                });
            let r = self
                .script
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .pop_front()
                .unwrap_or_else(|| RunResult::exited(0, ""));
            for line in r.output.lines() {
                out(line);
            }
            r
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runner_output_tail_is_bounded() {
        let mut t = OutputTail::new(100);
        for i in 0..1000 {
            t.push_line(&format!("line {i} ünïcode"));
        }
        let s = t.finish();
        assert!(s.len() < 200, "{}", s.len());
        assert!(s.starts_with("[... "));
        assert!(s.ends_with("line 999 ünïcode\n"));
        assert_eq!(tail("short".into(), 100), "short");
    }

    // SystemRunner only ever runs harmless programs here.
    #[test]
    fn runner_system_runner_streams_output_and_exit_code() {
        let mut lines = Vec::new();
        let r = SystemRunner.run(
            "/bin/echo",
            &["hello".into(), "world".into()],
            &[],
            Duration::from_secs(10),
            &mut |l| lines.push(l.to_owned()),
        );
        assert!(r.success(), "{r:?}");
        assert_eq!(lines, ["hello world"]);
        assert_eq!(r.output, "hello world\n");

        let mut lines = Vec::new();
        let r = SystemRunner.run(
            "/bin/sh",
            &[
                "-c".into(),
                "echo out; echo err >&2; echo \"$FW_TEST\"; exit 3".into(),
            ],
            &[("FW_TEST".into(), "from-env".into())],
            Duration::from_secs(10),
            &mut |l| lines.push(l.to_owned()),
        );
        assert_eq!(r.exit_code, Some(3));
        assert!(!r.success());
        lines.sort();
        assert_eq!(lines, ["err", "from-env", "out"]);

        let r = SystemRunner.run(
            "/nonexistent/fleetward-test-program",
            &[],
            &[],
            Duration::from_secs(1),
            &mut |_| {},
        );
        assert!(r.spawn_error.is_some() && !r.success());
    }

    #[test]
    fn runner_system_runner_kills_on_timeout() {
        let start = Instant::now();
        let mut lines = Vec::new();
        let r = SystemRunner.run(
            "/bin/sh",
            &["-c".into(), "echo started; sleep 5; echo never".into()],
            &[],
            Duration::from_millis(300),
            &mut |l| lines.push(l.to_owned()),
        );
        assert!(
            r.timed_out && r.exit_code.is_none() && !r.success(),
            "{r:?}"
        );
        assert!(
            start.elapsed() < Duration::from_secs(3),
            "{:?}",
            start.elapsed()
        );
        assert_eq!(lines[0], "started");
        assert!(!lines.iter().any(|l| l == "never"));
        assert!(r.output.contains("timeout"));
    }
}
