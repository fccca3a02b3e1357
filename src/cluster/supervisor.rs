//! Running replicas as separate processes, for `vellum dev`, `vellum demo`
//! and the integration tests that crash, pause and restart replicas.
//!
//! Separate processes rather than tasks in one process, because the faults
//! worth testing are process faults: SIGKILL loses everything not fsynced,
//! SIGSTOP freezes a replica mid-protocol while its sockets stay open (the
//! way a long GC pause or a hung disk looks to its peers). Signals other
//! than SIGKILL are sent with the `kill` command, since the crate uses no
//! `unsafe` and has no libc binding.
//!
//! A process is only signalled while it is our unreaped child: `try_wait`
//! first reaps it if it exited, and the kernel does not reuse the pid of an
//! unreaped child, so a signal can never hit an unrelated process.

use std::ffi::OsStr;
use std::fs::{File, OpenOptions};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// Interval between checks while waiting for a process to exit.
pub const EXIT_POLL_MS: u64 = 10;
/// Grace time `stop_all` gives replicas after SIGTERM before SIGKILL.
pub const STOP_GRACE_MS_DEFAULT: u64 = 5_000;
/// Attempts to spawn while the executable is "text file busy" (a binary or
/// script that is still being written, e.g. by a concurrent build), at most.
pub const SPAWN_RETRIES_MAX: u32 = 20;
/// Pause between those attempts.
const SPAWN_RETRY_MS: u64 = 25;
/// `ETXTBSY` on Linux.
const ERRNO_TEXT_FILE_BUSY: i32 = 26;

/// Why a process operation failed.
#[derive(Debug, thiserror::Error)]
pub enum SupervisorError {
    /// The log file could not be opened.
    #[error("log file {}: {source}", path.display())]
    LogFile {
        /// The log file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// The program could not be started.
    #[error("cannot start {}: {source}", program.display())]
    Spawn {
        /// The program.
        program: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// A signal could not be sent or the child could not be waited for.
    #[error("process {pid}: {what}: {reason}")]
    Signal {
        /// The process id.
        pid: u32,
        /// The operation, e.g. `SIGSTOP`.
        what: String,
        /// What failed.
        reason: String,
    },
    /// The process has already exited.
    #[error("process {pid} is not running (exited: {status})")]
    NotRunning {
        /// The process id.
        pid: u32,
        /// How it exited.
        status: ExitStatus,
    },
    /// The replica has not been started.
    #[error("replica {index} has not been started")]
    NotStarted {
        /// The replica.
        index: usize,
    },
    /// A replica index outside the supervised cluster.
    #[error("replica {index} is out of range for {count} replicas")]
    NoSuchReplica {
        /// The index asked for.
        index: usize,
        /// Replicas supervised.
        count: usize,
    },
}

/// One child process with its output appended to a log file. Dropping it
/// kills the process (a test that fails must not leave replicas behind).
#[derive(Debug)]
pub struct ReplicaProcess {
    child: Child,
    program: PathBuf,
    log_file: PathBuf,
    exited: Option<ExitStatus>,
}

impl ReplicaProcess {
    /// Starts `<exe> start --config <config>`, stdout and stderr appended to
    /// `log_file` (created if absent).
    pub fn spawn(exe: &Path, config: &Path, log_file: &Path) -> Result<Self, SupervisorError> {
        let args = [
            OsStr::new("start"),
            OsStr::new("--config"),
            config.as_os_str(),
        ];
        ReplicaProcess::spawn_command(exe, &args, log_file)
    }

    /// Starts any `program` with `args`, output appended to `log_file`; the
    /// building block of [`ReplicaProcess::spawn`], exposed for tests and tools.
    pub fn spawn_command<S: AsRef<OsStr>>(
        program: &Path,
        args: &[S],
        log_file: &Path,
    ) -> Result<Self, SupervisorError> {
        let log_error = |source| SupervisorError::LogFile {
            path: log_file.to_path_buf(),
            source,
        };
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(log_file)
            .map_err(log_error)?;
        let mut attempt = 0;
        let child = loop {
            attempt += 1;
            let mut command = Command::new(program);
            command
                .args(args)
                .stdin(Stdio::null())
                .stdout(clone_log(&log).map_err(log_error)?)
                .stderr(clone_log(&log).map_err(log_error)?);
            match command.spawn() {
                Ok(child) => break child,
                Err(e)
                    if e.raw_os_error() == Some(ERRNO_TEXT_FILE_BUSY)
                        && attempt < SPAWN_RETRIES_MAX =>
                {
                    std::thread::sleep(Duration::from_millis(SPAWN_RETRY_MS));
                }
                Err(source) => {
                    return Err(SupervisorError::Spawn {
                        program: program.to_path_buf(),
                        source,
                    });
                }
            }
        };
        tracing::info!(pid = child.id(), program = %program.display(), "started process");
        Ok(ReplicaProcess {
            child,
            program: program.to_path_buf(),
            log_file: log_file.to_path_buf(),
            exited: None,
        })
    }

    /// The process id.
    pub fn id(&self) -> u32 {
        self.child.id()
    }

    /// The file its output goes to.
    pub fn log_file(&self) -> &Path {
        &self.log_file
    }

    /// Whether the process has not exited yet (a paused process is running).
    pub fn is_running(&mut self) -> bool {
        self.poll_exit().is_none()
    }

    /// How the process exited, if it has (reaping it).
    pub fn exit_status(&mut self) -> Option<ExitStatus> {
        self.poll_exit()
    }

    /// SIGKILL (the process cannot catch it), then reaps it. A process that
    /// has already exited is fine: the goal, no process, holds.
    pub fn kill(&mut self) -> Result<ExitStatus, SupervisorError> {
        if let Some(status) = self.poll_exit() {
            return Ok(status);
        }
        self.child
            .kill()
            .map_err(|e| self.signal_error("SIGKILL", e))?;
        let status = self
            .child
            .wait()
            .map_err(|e| self.signal_error("wait", e))?;
        self.exited = Some(status);
        tracing::info!(pid = self.id(), %status, "killed process");
        Ok(status)
    }

    /// SIGSTOP: freezes the process (its sockets stay open).
    pub fn pause(&mut self) -> Result<(), SupervisorError> {
        self.signal("STOP")
    }

    /// SIGCONT: lets a paused process run again.
    pub fn resume(&mut self) -> Result<(), SupervisorError> {
        self.signal("CONT")
    }

    /// SIGTERM, then SIGCONT so a paused process can act on it.
    pub fn terminate(&mut self) -> Result<(), SupervisorError> {
        self.signal("TERM")?;
        self.signal("CONT")
    }

    /// Waits up to `timeout` for the process to exit; `None` if it still runs.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.poll_exit() {
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(EXIT_POLL_MS));
        }
    }

    /// Sends `SIG<name>` with the `kill` command, if the process still runs.
    fn signal(&mut self, name: &str) -> Result<(), SupervisorError> {
        if let Some(status) = self.poll_exit() {
            return Err(SupervisorError::NotRunning {
                pid: self.id(),
                status,
            });
        }
        let output = Command::new("kill")
            .arg(format!("-{name}"))
            .arg(self.id().to_string())
            .stdin(Stdio::null())
            .output()
            .map_err(|e| self.signal_error(&format!("SIG{name}"), e))?;
        if !output.status.success() {
            return Err(SupervisorError::Signal {
                pid: self.id(),
                what: format!("SIG{name}"),
                reason: format!(
                    "kill exited with {}: {}",
                    output.status,
                    String::from_utf8_lossy(&output.stderr).trim()
                ),
            });
        }
        tracing::debug!(pid = self.id(), signal = name, program = %self.program.display(), "sent signal");
        Ok(())
    }

    /// Reaps the child if it exited; remembers the status.
    fn poll_exit(&mut self) -> Option<ExitStatus> {
        if self.exited.is_none() {
            // An error here means the child was already reaped, which only
            // this struct does (and then `exited` is set): treat it as running.
            self.exited = self.child.try_wait().ok().flatten();
        }
        self.exited
    }

    fn signal_error(&self, what: &str, e: std::io::Error) -> SupervisorError {
        SupervisorError::Signal {
            pid: self.id(),
            what: what.to_string(),
            reason: e.to_string(),
        }
    }
}

impl Drop for ReplicaProcess {
    fn drop(&mut self) {
        // Best effort: there is no one to report a failure to here.
        let _ = self.kill();
    }
}

fn clone_log(log: &File) -> std::io::Result<Stdio> {
    Ok(Stdio::from(log.try_clone()?))
}

/// The replica processes of one cluster: `<exe> start --config <configs[i]>`,
/// output of replica i in `<log_dir>/r<i>.log`.
#[derive(Debug)]
pub struct Supervisor {
    exe: PathBuf,
    configs: Vec<PathBuf>,
    log_dir: PathBuf,
    processes: Vec<Option<ReplicaProcess>>,
}

impl Supervisor {
    /// A supervisor for one replica per config; nothing is started yet.
    pub fn new(exe: &Path, configs: Vec<PathBuf>, log_dir: &Path) -> Supervisor {
        let processes = configs.iter().map(|_| None).collect();
        Supervisor {
            exe: exe.to_path_buf(),
            configs,
            log_dir: log_dir.to_path_buf(),
            processes,
        }
    }

    /// Replicas supervised.
    pub fn replica_count(&self) -> usize {
        self.configs.len()
    }

    /// Where replica `i` logs.
    pub fn log_path(&self, i: usize) -> PathBuf {
        self.log_dir.join(format!("r{i}.log"))
    }

    /// Starts every replica that is not running.
    pub fn start_all(&mut self) -> Result<(), SupervisorError> {
        for i in 0..self.replica_count() {
            if !self.is_running(i) {
                self.start(i)?;
            }
        }
        Ok(())
    }

    /// Starts replica `i` (killing a previous process of it, if any).
    pub fn start(&mut self, i: usize) -> Result<(), SupervisorError> {
        self.check(i)?;
        if let Some(mut old) = self.processes[i].take() {
            old.kill()?;
        }
        let process = ReplicaProcess::spawn(&self.exe, &self.configs[i], &self.log_path(i))?;
        self.processes[i] = Some(process);
        Ok(())
    }

    /// SIGKILLs replica `i` (a crash: nothing unsynced survives).
    pub fn kill(&mut self, i: usize) -> Result<(), SupervisorError> {
        self.check(i)?;
        if let Some(process) = self.processes[i].as_mut() {
            process.kill()?;
        }
        Ok(())
    }

    /// Kills replica `i` and starts it again.
    pub fn restart(&mut self, i: usize) -> Result<(), SupervisorError> {
        self.kill(i)?;
        self.start(i)
    }

    /// SIGSTOPs replica `i`.
    pub fn pause(&mut self, i: usize) -> Result<(), SupervisorError> {
        self.running_mut(i)?.pause()
    }

    /// SIGCONTs replica `i`.
    pub fn resume(&mut self, i: usize) -> Result<(), SupervisorError> {
        self.running_mut(i)?.resume()
    }

    /// Whether replica `i` has a process that has not exited.
    pub fn is_running(&mut self, i: usize) -> bool {
        self.processes
            .get_mut(i)
            .and_then(Option::as_mut)
            .is_some_and(ReplicaProcess::is_running)
    }

    /// Replica `i`'s process, if started.
    pub fn process(&mut self, i: usize) -> Option<&mut ReplicaProcess> {
        self.processes.get_mut(i).and_then(Option::as_mut)
    }

    /// SIGTERMs every running replica, waits up to `grace` in total for
    /// them to exit, then SIGKILLs the rest. Returns how many had to be killed.
    pub fn stop_all(&mut self, grace: Duration) -> Result<usize, SupervisorError> {
        for process in self.processes.iter_mut().flatten() {
            match process.terminate() {
                Ok(()) | Err(SupervisorError::NotRunning { .. }) => {}
                Err(e) => return Err(e),
            }
        }
        let deadline = Instant::now() + grace;
        let mut killed = 0;
        for process in self.processes.iter_mut().flatten() {
            let left = deadline.saturating_duration_since(Instant::now());
            if process.wait_exit(left).is_none() {
                process.kill()?;
                killed += 1;
            }
        }
        Ok(killed)
    }

    fn check(&self, i: usize) -> Result<(), SupervisorError> {
        if i >= self.replica_count() {
            return Err(SupervisorError::NoSuchReplica {
                index: i,
                count: self.replica_count(),
            });
        }
        Ok(())
    }

    fn running_mut(&mut self, i: usize) -> Result<&mut ReplicaProcess, SupervisorError> {
        self.check(i)?;
        self.processes[i]
            .as_mut()
            .ok_or(SupervisorError::NotStarted { index: i })
    }
}
