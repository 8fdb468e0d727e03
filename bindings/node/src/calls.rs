//! Where a native call waits and computes: on threads of the addon's own, never on libuv's
//! pool.
//!
//! napi-rs' `AsyncTask` runs its work on a libuv worker, which then waits there for the
//! model's lock and for the compute threads. libuv has four workers for the whole process:
//! four concurrent predicts left none for the host's file system, DNS, crypto and zlib work
//! (a host's `readFile` + `pbkdf2` round trip took up to 867 ms behind eight `small`
//! predicts). Here a call's Promise is created on the JavaScript thread, its work runs on a
//! thread of ours, and the result is posted back through a threadsafe function, so libuv's
//! pool stays the host's.
//!
//! A model's calls run in order on one thread of their own (its [`CallLine`]): they need the
//! model's lock one at a time anyway, and a queue costs nothing while a blocked thread per
//! waiting call would. Calls that hold no model (load, convert, preprocess) share a few
//! threads ([`SHARED_THREADS`]), in arrival order: however many a host starts at once, the
//! threads stay few.

use std::sync::{mpsc, Arc, Mutex, OnceLock};
use std::thread;

use napi::bindgen_prelude::{Object, Task};
use napi::{Env, Result};

use crate::error::{coded, no_panic, INTERNAL};

type Job = Box<dyn FnOnce() + Send>;

/// One thread that runs the calls sent to it in order; it ends when the line is dropped (its
/// model was freed by the garbage collector), after the calls already sent.
pub struct CallLine {
    jobs: mpsc::Sender<Job>,
}

impl CallLine {
    pub fn new(name: &str) -> Result<Self> {
        let (jobs, queue) = mpsc::channel::<Job>();
        thread::Builder::new()
            .name(name.into())
            .spawn(move || {
                for job in queue {
                    job();
                }
            })
            .map_err(|e| coded(INTERNAL, format!("cannot start the thread for a model's calls: {e}")))?;
        Ok(Self { jobs })
    }
}

/// Threads for the calls that hold no model: as many as libuv's pool had, enough to load one
/// model while another's input is prepared.
pub const SHARED_THREADS: usize = 4;

/// The shared threads' queue, started at the first model-less call; None if no thread could
/// be started.
fn shared() -> Option<&'static Mutex<mpsc::Sender<Job>>> {
    static SHARED: OnceLock<Option<Mutex<mpsc::Sender<Job>>>> = OnceLock::new();
    SHARED
        .get_or_init(|| {
            let (jobs, queue) = mpsc::channel::<Job>();
            let queue = Arc::new(Mutex::new(queue));
            let started = (0..SHARED_THREADS)
                .filter(|i| {
                    let queue = queue.clone();
                    thread::Builder::new()
                        .name(format!("motivnet-call-{i}"))
                        .spawn(move || loop {
                            // The lock is held only to take the next job, not while it runs.
                            let job = queue.lock().unwrap_or_else(|p| p.into_inner()).recv();
                            match job {
                                Ok(job) => job(),
                                Err(_) => return,
                            }
                        })
                        .is_ok()
                })
                .count();
            (started > 0).then(|| Mutex::new(jobs))
        })
        .as_ref()
}

/// Runs `task` off the JavaScript thread and returns the Promise of its result: in order on
/// `line` when given (a model's calls), else on the shared threads. `compute` runs there,
/// `resolve` back on the JavaScript thread, as with `AsyncTask`. Every path settles the
/// Promise: should no thread of ours take the job, it runs here, on the calling thread.
pub fn start<'env, T>(env: &'env Env, line: Option<&CallLine>, task: T) -> Result<Object<'env>>
where
    T: Task + Send + 'static,
{
    let (deferred, promise) = env.create_deferred()?;
    let job: Job = Box::new(move || {
        let mut task = task;
        // A panic would end the thread and leave this and every later Promise pending.
        match no_panic(|| task.compute()) {
            Ok(output) => deferred.resolve(move |env| task.resolve(env, output)),
            Err(err) => deferred.reject(err),
        }
    });
    let unsent = match line {
        Some(line) => line.jobs.send(job).err().map(|mpsc::SendError(job)| job),
        None => Some(job),
    };
    let unsent = match (unsent, shared()) {
        (Some(job), Some(queue)) => {
            queue.lock().unwrap_or_else(|p| p.into_inner()).send(job).err().map(|mpsc::SendError(job)| job)
        }
        (unsent, _) => unsent,
    };
    if let Some(job) = unsent {
        job();
    }
    Ok(promise)
}
