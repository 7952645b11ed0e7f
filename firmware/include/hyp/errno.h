/* Linux's errno values: the host model decodes them with Python's errno. */
#ifndef __HYP_ERRNO_H__
#define __HYP_ERRNO_H__
#define EPERM	1
#define ENOENT	2
#define EAGAIN	11
#define ENOMEM	12
#define EFAULT	14
#define EBUSY	16
#define EEXIST	17
#define EINVAL	22
#define ERANGE	34
#endif
