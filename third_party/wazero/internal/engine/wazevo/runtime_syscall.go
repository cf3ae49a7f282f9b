package wazevo

import _ "unsafe" // for go:linkname

// agentbox patch (see third_party/wazero/README.md in agentbox).
//
// With ensureTermination, compiled code tests the module's Closed word at each loop header instead of
// exiting to Go there, so it never yields to the Go scheduler on its own: a spinning guest would hold
// its P and block every stop-the-world (GC) until it returned. While native code runs, the goroutine is
// therefore marked as being in a system call, the way a blocking read is: the scheduler hands its P to
// other goroutines, and the GC scans its stack from the entry point without waiting for it.
//
// Between entersyscall and exitsyscall nothing may grow the Go stack or call into the runtime, hence
// nosplit wrappers that only call the assembly entry points.

//go:linkname entersyscall runtime.entersyscall
func entersyscall()

//go:linkname exitsyscall runtime.exitsyscall
func exitsyscall()

//go:nosplit
func entrypointInSyscall(preambleExecutable, functionExecutable *byte, executionContextPtr uintptr, moduleContextPtr *byte, paramResultStackPtr *uint64, goAllocatedStackSlicePtr uintptr) {
	entersyscall()
	entrypoint(preambleExecutable, functionExecutable, executionContextPtr, moduleContextPtr, paramResultStackPtr, goAllocatedStackSlicePtr)
	exitsyscall()
}

//go:nosplit
func afterGoFunctionCallEntrypointInSyscall(executable *byte, executionContextPtr uintptr, stackPointer, framePointer uintptr) {
	entersyscall()
	afterGoFunctionCallEntrypoint(executable, executionContextPtr, stackPointer, framePointer)
	exitsyscall()
}

// resume goes back into native code after the Go side of an exit, in a system call when inSyscall.
func (c *callEngine) resume(inSyscall bool, executable *byte, executionContextPtr uintptr, stackPointer, framePointer uintptr) {
	if inSyscall {
		afterGoFunctionCallEntrypointInSyscall(executable, executionContextPtr, stackPointer, framePointer)
		return
	}
	afterGoFunctionCallEntrypoint(executable, executionContextPtr, stackPointer, framePointer)
}
