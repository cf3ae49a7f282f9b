/* Forced include for building SQLite 3.40 (which predates WASI) against wasi-libc.
 * WASI has no file ownership, permissions or advisory locks; a sandbox is single-process, so locks are
 * granted without asking and ownership calls succeed without effect. */
#include <fcntl.h>
#include <stdarg.h>
#include <sys/types.h>
#include <unistd.h>

#define F_GETLK 5
#define F_SETLK 6
#define F_SETLKW 7
#define F_RDLCK 0
#define F_WRLCK 1
#define F_UNLCK 2

static inline int agentbox_fchmod(int fd, mode_t m) { (void)fd; (void)m; return 0; }
static inline int agentbox_fchown(int fd, uid_t u, gid_t g) { (void)fd; (void)u; (void)g; return 0; }
static inline uid_t agentbox_geteuid(void) { return 0; }
static inline int agentbox_fcntl(int fd, int cmd, ...) {
  va_list ap;
  va_start(ap, cmd);
  void *arg = va_arg(ap, void *);
  va_end(ap);
  switch (cmd) {
  case F_GETLK:
    ((struct flock *)arg)->l_type = F_UNLCK;
    return 0;
  case F_SETLK:
  case F_SETLKW:
    return 0;
  default:
    return fcntl(fd, cmd, (int)(long)arg);
  }
}
#define fchmod agentbox_fchmod
#define fchown agentbox_fchown
#define geteuid agentbox_geteuid
#define fcntl agentbox_fcntl
