#ifndef _ERRNO_H
#define _ERRNO_H

/* The guest is single-threaded, so errno is a plain global. */
extern int errno;

#define EPERM   1
#define ENOENT  2
#define EIO     5
#define EBADF   9
#define ENOMEM 12
#define EACCES 13
#define EFAULT 14
#define EINVAL 22
#define ENOSPC 28
#define ESPIPE 29
#define EDOM   33
#define ERANGE 34
#define ENOSYS 38
#define EOVERFLOW 75

#endif
