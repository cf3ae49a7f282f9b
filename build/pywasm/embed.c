// agentbox embedding entry for CPython on wasm32-wasi, linked as a reactor in place of Programs/python.o.
//
// The host calls agentbox_init once, captures linear memory and __stack_pointer as a snapshot, and starts
// every sandbox from that image; agentbox_exec then runs one request. A reactor never exits, so the
// runner (Python code handed to agentbox_init) flushes sys.stdout and sys.stderr itself.
#include "Python.h"

#include <stdint.h>
#include <string.h>
#include <wasi/api.h>

// --- errno the host cannot pass through wazero -----------------------------------------------------------
// wazero's filesystem interface has no ENOSPC, so the host's filesystem answers EIO and remembers the
// errno it meant; these link-time wrappers (-Wl,--wrap) ask for it whenever a call fails with EIO.
__attribute__((import_module("agentbox"), import_name("fs_errno"))) int32_t agentbox_fs_errno(void);

static __wasi_errno_t real_errno(__wasi_errno_t e) {
  if (e == __WASI_ERRNO_IO) {
    int32_t meant = agentbox_fs_errno();
    if (meant != 0) return (__wasi_errno_t)meant;
  }
  return e;
}

__wasi_errno_t __real___wasi_fd_write(__wasi_fd_t, const __wasi_ciovec_t *, size_t, __wasi_size_t *);
__wasi_errno_t __wrap___wasi_fd_write(__wasi_fd_t fd, const __wasi_ciovec_t *iovs, size_t n, __wasi_size_t *ret) {
  return real_errno(__real___wasi_fd_write(fd, iovs, n, ret));
}

__wasi_errno_t __real___wasi_fd_pwrite(__wasi_fd_t, const __wasi_ciovec_t *, size_t, __wasi_filesize_t,
                                       __wasi_size_t *);
__wasi_errno_t __wrap___wasi_fd_pwrite(__wasi_fd_t fd, const __wasi_ciovec_t *iovs, size_t n,
                                       __wasi_filesize_t off, __wasi_size_t *ret) {
  return real_errno(__real___wasi_fd_pwrite(fd, iovs, n, off, ret));
}

__wasi_errno_t __real___wasi_path_open(__wasi_fd_t, __wasi_lookupflags_t, const char *, __wasi_oflags_t,
                                       __wasi_rights_t, __wasi_rights_t, __wasi_fdflags_t, __wasi_fd_t *);
__wasi_errno_t __wrap___wasi_path_open(__wasi_fd_t fd, __wasi_lookupflags_t dirflags, const char *path,
                                       __wasi_oflags_t oflags, __wasi_rights_t base, __wasi_rights_t inh,
                                       __wasi_fdflags_t fdflags, __wasi_fd_t *ret) {
  return real_errno(__real___wasi_path_open(fd, dirflags, path, oflags, base, inh, fdflags, ret));
}

__wasi_errno_t __real___wasi_path_create_directory(__wasi_fd_t, const char *);
__wasi_errno_t __wrap___wasi_path_create_directory(__wasi_fd_t fd, const char *path) {
  return real_errno(__real___wasi_path_create_directory(fd, path));
}

__wasi_errno_t __real___wasi_fd_filestat_set_size(__wasi_fd_t, __wasi_filesize_t);
__wasi_errno_t __wrap___wasi_fd_filestat_set_size(__wasi_fd_t fd, __wasi_filesize_t size) {
  return real_errno(__real___wasi_fd_filestat_set_size(fd, size));
}

__wasi_errno_t __real___wasi_path_rename(__wasi_fd_t, const char *, __wasi_fd_t, const char *);
__wasi_errno_t __wrap___wasi_path_rename(__wasi_fd_t fd, const char *from, __wasi_fd_t nfd, const char *to) {
  return real_errno(__real___wasi_path_rename(fd, from, nfd, to));
}

// --- interpreter ---------------------------------------------------------------------------------------

// Where agentbox_exec leaves its answer: a pointer and length into guest memory, valid until the next
// call.
struct agentbox_reply {
  uint32_t ptr;
  uint32_t len;
};

static struct agentbox_reply reply;
static PyObject *runner;     // the runner's run(request: bytes) -> bytes
static PyObject *last_reply; // keeps reply's bytes alive

static void set_reply(PyObject *bytes) {
  Py_XDECREF(last_reply);
  last_reply = bytes;
  if (bytes == NULL) {
    reply.ptr = 0;
    reply.len = 0;
    return;
  }
  reply.ptr = (uint32_t)(uintptr_t)PyBytes_AS_STRING(bytes);
  reply.len = (uint32_t)PyBytes_GET_SIZE(bytes);
}

// agentbox_init starts an isolated interpreter (no site, no environment, no bytecode writing) whose
// standard library is at /usr/local/lib/python3.11, then executes the runner source and keeps its run
// function. Returns 0 on success; on failure the Python error has been printed to stderr.
__attribute__((export_name("agentbox_init"))) int agentbox_init(const char *src, int len) {
  PyStatus status;
  // UTF-8 mode: WASI has only the C locale, which would otherwise make stdio and open() ASCII-only.
  PyPreConfig preconfig;
  PyPreConfig_InitIsolatedConfig(&preconfig);
  preconfig.utf8_mode = 1;
  status = Py_PreInitialize(&preconfig);
  if (PyStatus_Exception(status)) {
    fprintf(stderr, "agentbox_init: %s\n", status.err_msg ? status.err_msg : "pre-initialisation failed");
    return 1;
  }
  PyConfig config;
  PyConfig_InitIsolatedConfig(&config);
  config.site_import = 0;
  config.write_bytecode = 0;
  config.install_signal_handlers = 0;
  config.buffered_stdio = 1;
  config.user_site_directory = 0;
  config.module_search_paths_set = 1;
  status = PyWideStringList_Append(&config.module_search_paths, L"/usr/local/lib/python3.11");
  if (PyStatus_Exception(status)) goto fail;
  status = PyConfig_SetString(&config, &config.home, L"/usr/local");
  if (PyStatus_Exception(status)) goto fail;
  status = PyConfig_SetString(&config, &config.program_name, L"python3");
  if (PyStatus_Exception(status)) goto fail;
  status = Py_InitializeFromConfig(&config);
  if (PyStatus_Exception(status)) goto fail;
  PyConfig_Clear(&config);

  // The source arrives as a pointer and length; CPython wants a NUL-terminated string.
  char *text = malloc((size_t)len + 1);
  if (text == NULL) return 3;
  memcpy(text, src, (size_t)len);
  text[len] = 0;
  PyObject *code = Py_CompileStringExFlags(text, "<agentbox-runner>", Py_file_input, NULL, -1);
  free(text);
  if (code == NULL) goto pyfail;
  PyObject *globals = PyDict_New();
  if (globals == NULL) goto pyfail;
  if (PyDict_SetItemString(globals, "__builtins__", PyEval_GetBuiltins()) < 0) goto pyfail;
  if (PyDict_SetItemString(globals, "__name__", PyUnicode_FromString("_agentbox_runner")) < 0) goto pyfail;
  PyObject *res = PyEval_EvalCode(code, globals, globals);
  Py_DECREF(code);
  if (res == NULL) goto pyfail;
  Py_DECREF(res);
  runner = PyDict_GetItemString(globals, "run");
  if (runner == NULL) {
    PyErr_SetString(PyExc_RuntimeError, "runner defines no run()");
    goto pyfail;
  }
  Py_INCREF(runner);
  return 0;

pyfail:
  PyErr_Print();
  return 2;
fail:
  PyConfig_Clear(&config);
  if (status.err_msg != NULL) {
    fprintf(stderr, "agentbox_init: %s: %s\n", status.func ? status.func : "", status.err_msg);
  }
  return 1;
}

// agentbox_exec hands one request (bytes, a JSON document the runner defines) to the runner and returns
// where its reply is. A zero reply means the runner itself failed; the error was printed to stderr.
__attribute__((export_name("agentbox_exec"))) struct agentbox_reply *agentbox_exec(const char *req, int len) {
  PyObject *arg = PyBytes_FromStringAndSize(req, len);
  if (arg == NULL) {
    PyErr_Print();
    set_reply(NULL);
    return &reply;
  }
  PyObject *out = PyObject_CallOneArg(runner, arg);
  Py_DECREF(arg);
  if (out == NULL || !PyBytes_Check(out)) {
    if (out == NULL) PyErr_Print();
    Py_XDECREF(out);
    set_reply(NULL);
    return &reply;
  }
  set_reply(out);
  return &reply;
}

// agentbox_main runs `python3 -c CODE` the way the stock python.wasm's _start does, from a fresh instance:
// the cold path that benchmarks compare the snapshot against.
__attribute__((export_name("agentbox_main"))) int agentbox_main(const char *code, int len) {
  char *copy = malloc((size_t)len + 1);
  if (copy == NULL) return 120;
  memcpy(copy, code, (size_t)len);
  copy[len] = 0;
  char *argv[] = {"python3", "-c", copy, NULL};
  return Py_BytesMain(3, argv);
}
