//! SIGTERM and SIGINT end the process at once with status 0. As PID 1 in a container the kernel drops
//! every signal that has no handler installed, so without this `docker stop` would wait out its timeout
//! and SIGKILL us. Std only: two libc symbols declared by hand (std links libc anyway).

use std::os::raw::c_int;

const SIGINT: c_int = 2;
const SIGTERM: c_int = 15;

unsafe extern "C" {
    /// glibc's `signal` has BSD semantics: the handler stays installed and interrupted calls restart.
    fn signal(signum: c_int, handler: extern "C" fn(c_int)) -> usize;
    fn _exit(status: c_int) -> !;
}

/// `_exit` is async-signal-safe, and there is nothing to flush or drain: every answer is written whole
/// by its connection thread, and a client cut off mid-request simply retries elsewhere.
extern "C" fn on_term(_signum: c_int) {
    unsafe { _exit(0) }
}

pub fn exit_on_term() {
    unsafe {
        signal(SIGTERM, on_term);
        signal(SIGINT, on_term);
    }
}
