/* deswm._native: the per-file read of a local file in one call, without the GIL.
 *
 * A packing lane reads every file it archives; through ``os`` that is five calls into
 * Python per file (open through ctypes' openat2, two fstat, read, close), each taking and
 * dropping the GIL. ``read_file`` does the same system calls in one C call that drops
 * the GIL once, with the same rules as the Python path it replaces
 * (``deswm._contain.read_local``): open read-only, non-blocking (a FIFO does not block)
 * and without a controlling tty; with ``beneath``, through openat2 with RESOLVE_BENEATH
 * | RESOLVE_NO_MAGICLINKS, so the kernel refuses any path that leaves ``dirfd``
 * (``..``, absolute or escaping symlinks: EXDEV); a directory raises EISDIR; any other
 * file that is not regular returns None (deswm never reads FIFOs, devices, sockets);
 * a regular file is read to its end, however its size changes meanwhile.
 *
 * Optional: without a C compiler the package installs without it and the Python path
 * runs instead (deswm._contain.read_local).
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <errno.h>
#include <limits.h>
#include <fcntl.h>
#include <stdint.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#if defined(__linux__)
#include <sys/syscall.h>
#endif

#ifndef O_CLOEXEC
#define O_CLOEXEC 0
#endif
#ifndef O_NONBLOCK
#define O_NONBLOCK 0
#endif
#ifndef O_NOCTTY
#define O_NOCTTY 0
#endif

#define READ_FLAGS (O_RDONLY | O_CLOEXEC | O_NONBLOCK | O_NOCTTY)
#define RESOLVE_NO_MAGICLINKS_FLAG 0x02
#define RESOLVE_BENEATH_FLAG 0x08
#define GROW_MIN ((Py_ssize_t)1 << 20)

/* Linux's struct open_how (include/uapi/linux/openat2.h), declared here so that the
 * module builds against C libraries and kernel headers older than openat2. */
struct deswm_open_how {
    uint64_t flags;
    uint64_t mode;
    uint64_t resolve;
};

static int
open_beneath(int dirfd, const char *path)
{
#if defined(__linux__) && defined(SYS_openat2)
    struct deswm_open_how how;
    memset(&how, 0, sizeof how);
    how.flags = READ_FLAGS;
    how.resolve = RESOLVE_BENEATH_FLAG | RESOLVE_NO_MAGICLINKS_FLAG;
    return (int)syscall(SYS_openat2, dirfd, path, &how, sizeof how);
#else
    (void)dirfd;
    (void)path;
    errno = ENOSYS;
    return -1;
#endif
}

/* Read from ``fd`` into ``buffer`` (``capacity`` bytes) from offset ``*size`` on, until
 * the end of the file, until it holds ``expected`` bytes (what fstat said: a file that
 * does not change is then read in one call), or until the buffer is full. Returns 1 at
 * the end, 0 when the buffer is full (the file grew), -1 with errno set on an error. A
 * short read alone is not taken as the end: some file systems return them early. */
static int
read_until(int fd, char *buffer, Py_ssize_t capacity, Py_ssize_t expected, Py_ssize_t *size)
{
    while (*size < capacity) {
        ssize_t n = read(fd, buffer + *size, (size_t)(capacity - *size));
        if (n < 0) {
            if (errno == EINTR) {
                continue;
            }
            return -1;
        }
        if (n == 0) {
            return 1;
        }
        *size += n;
        if (*size == expected) {
            return 1;
        }
    }
    return 0;
}

PyDoc_STRVAR(read_file_doc,
"read_file(dirfd, path, beneath, /)\n--\n\n"
"The bytes of the regular file at ``path`` (relative to ``dirfd``), or None when it is\n"
"not a regular file. With ``beneath`` the path may not leave ``dirfd`` (openat2\n"
"RESOLVE_BENEATH | RESOLVE_NO_MAGICLINKS). Raises OSError (with the errno's subclass)\n"
"for a failed open or read, IsADirectoryError for a directory.");

static PyObject *
read_file(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    (void)module;
    if (nargs != 3) {
        PyErr_Format(PyExc_TypeError, "read_file() takes 3 arguments (%zd given)", nargs);
        return NULL;
    }
    long dirfd_value = PyLong_AsLong(args[0]);
    if (dirfd_value == -1 && PyErr_Occurred()) {
        return NULL;
    }
    if (dirfd_value < INT_MIN || dirfd_value > INT_MAX) {
        PyErr_SetString(PyExc_OverflowError, "dirfd is not a file descriptor");
        return NULL;
    }
    int dirfd = (int)dirfd_value;
    int beneath = PyObject_IsTrue(args[2]);
    if (beneath < 0) {
        return NULL;
    }
    PyObject *encoded = NULL;
    if (!PyUnicode_FSConverter(args[1], &encoded)) {
        return NULL;
    }
    const char *path = PyBytes_AS_STRING(encoded);

    int fd = -1;
    int saved = 0;
    struct stat info;
    Py_BEGIN_ALLOW_THREADS
    fd = beneath ? open_beneath(dirfd, path) : openat(dirfd, path, READ_FLAGS);
    if (fd < 0) {
        saved = errno;
    }
    else if (fstat(fd, &info) != 0) {
        saved = errno;
        close(fd);
        fd = -1;
    }
    Py_END_ALLOW_THREADS
    if (fd < 0) {
        errno = saved;
        PyErr_SetFromErrnoWithFilenameObject(PyExc_OSError, args[1]);
        Py_DECREF(encoded);
        return NULL;
    }
    Py_DECREF(encoded);
    if (S_ISDIR(info.st_mode)) {
        close(fd);
        errno = EISDIR;
        return PyErr_SetFromErrnoWithFilenameObject(PyExc_OSError, args[1]);
    }
    if (!S_ISREG(info.st_mode)) {
        close(fd);
        Py_RETURN_NONE;
    }
    if (info.st_size < 0 || (uint64_t)info.st_size >= (uint64_t)PY_SSIZE_T_MAX / 2) {
        close(fd);
        errno = EFBIG;
        return PyErr_SetFromErrnoWithFilenameObject(PyExc_OSError, args[1]);
    }

    /* Its size plus one byte: a read that fills it means the file grew meanwhile. */
    Py_ssize_t expected = (Py_ssize_t)info.st_size;
    Py_ssize_t capacity = expected + 1;
    PyObject *data = PyBytes_FromStringAndSize(NULL, capacity);
    if (data == NULL) {
        close(fd);
        return NULL;
    }
    Py_ssize_t size = 0;
    for (;;) {
        int end;
        char *buffer = PyBytes_AS_STRING(data);
        Py_BEGIN_ALLOW_THREADS
        end = read_until(fd, buffer, capacity, expected, &size);
        if (end < 0) {
            saved = errno;
        }
        Py_END_ALLOW_THREADS
        if (end < 0) {
            close(fd);
            Py_DECREF(data);
            errno = saved;
            return PyErr_SetFromErrnoWithFilenameObject(PyExc_OSError, args[1]);
        }
        if (end) {
            break;
        }
        /* It grew while it was read: read on to its end, as a file object's read() would. */
        Py_ssize_t grown = capacity + (capacity < GROW_MIN ? GROW_MIN : capacity);
        if (_PyBytes_Resize(&data, grown) < 0) {
            close(fd);
            return NULL;
        }
        capacity = grown;
    }
    close(fd);
    if (_PyBytes_Resize(&data, size) < 0) {
        return NULL;
    }
    return data;
}

static PyMethodDef native_methods[] = {
    {"read_file", (PyCFunction)(void (*)(void))read_file, METH_FASTCALL, read_file_doc},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef native_module = {
    PyModuleDef_HEAD_INIT,
    "deswm._native",
    "deswm's optional C helpers (see deswm._contain.read_local).",
    0,
    native_methods,
    NULL,
    NULL,
    NULL,
    NULL,
};

PyMODINIT_FUNC
PyInit__native(void)
{
    return PyModuleDef_Init(&native_module);
}
