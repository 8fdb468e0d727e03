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
//! waiting call would. Calls that hold no model (load, convert, preprocess) get a short-lived
//! thread each.

use std::sync::mpsc;
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

/// Runs `task` off the JavaScript thread and returns the Promise of its result: in order on
/// `line` when given (a model's calls), else on a thread of its own. `compute` runs there,
/// `resolve` back on the JavaScript thread, as with `AsyncTask`.
pub fn start<'env, T>(env: &'env Env, line: Option<&CallLine>, task: T) -> Result<Object<'env>>
where
    T: Task + Send + 'static,
{
    let (deferred, promise) = env.create_deferred()?;
    let job: Job = Box::new(move || {
        let mut task = task;
        // A panic would end the line's thread and leave this and every later Promise pending.
        match no_panic(|| task.compute()) {
            Ok(output) => deferred.resolve(move |env| task.resolve(env, output)),
            Err(err) => deferred.reject(err),
        }
    });
    let unsent = match line {
        Some(line) => line.jobs.send(job).err().map(|mpsc::SendError(job)| job),
        None => Some(job),
    };
    // No line, or its thread is gone: the call gets a thread of its own.
    if let Some(job) = unsent {
        thread::Builder::new()
            .name("motivnet-call".into())
            .spawn(job)
            .map_err(|e| coded(INTERNAL, format!("cannot start a thread for the call: {e}")))?;
    }
    Ok(promise)
}
