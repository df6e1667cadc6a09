/* deswm._native: the per-file read of a local file in one call, without the GIL.
 *
 * A packing lane reads every file it archives; through ``os`` that is five calls into
 * Python per file (open through ctypes' openat2, two fstat, read, close), each taking and
 * dropping the GIL. ``read_file`` does the same system calls in one C call that drops
 * the GIL once, with the same rules as the Python path it replaces
 * (``deswm._contain.open_local`` and ``deswm._readers._read_local``): open read-only,
 * non-blocking (a FIFO does not block) and without a controlling tty, through openat2
 * with RESOLVE_BENEATH | RESOLVE_NO_MAGICLINKS, so the kernel refuses any path that
 * leaves ``dirfd`` (``..``, absolute or escaping symlinks: EXDEV); a directory raises
 * EISDIR; any other file that is not regular returns None (deswm never reads FIFOs,
 * devices or sockets inside a root); a regular file is read to its end, however its
 * size changes meanwhile.
 *
 * Optional: without a C compiler the package installs without it and the Python path
 * runs instead. ``planned_entries`` is the packer's per-entry work of a publish
 * (deswm._packer._new_items).
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
            return -1; /* EINTR too: the caller checks for signals, then reads on */
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
"read_file(dirfd, path, /)\n--\n\n"
"The bytes of the regular file at ``path`` beneath ``dirfd`` (openat2 RESOLVE_BENEATH |\n"
"RESOLVE_NO_MAGICLINKS), or None when it is not a regular file. Raises OSError (with the\n"
"errno's subclass) for a failed open or read, IsADirectoryError for a directory.");

static PyObject *
read_file(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    (void)module;
    if (nargs != 2) {
        PyErr_Format(PyExc_TypeError, "read_file() takes 2 arguments (%zd given)", nargs);
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
    PyObject *encoded = NULL;
    if (!PyUnicode_FSConverter(args[1], &encoded)) {
        return NULL;
    }
    const char *path = PyBytes_AS_STRING(encoded);

    int fd = -1;
    int saved = 0;
    struct stat info;
    for (;;) {
        Py_BEGIN_ALLOW_THREADS
        fd = open_beneath(dirfd, path);
        if (fd < 0) {
            saved = errno;
        }
        else if (fstat(fd, &info) != 0) {
            saved = errno;
            close(fd);
            fd = -1;
        }
        Py_END_ALLOW_THREADS
        /* PEP 475: a signal's handler runs, and unless it raises, the call goes on. */
        if (fd >= 0 || saved != EINTR) {
            break;
        }
        if (PyErr_CheckSignals() < 0) {
            Py_DECREF(encoded);
            return NULL;
        }
    }
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
        if (end < 0 && saved == EINTR) {
            if (PyErr_CheckSignals() < 0) {
                close(fd);
                Py_DECREF(data);
                return NULL;
            }
            continue; /* what was read stays: ``size`` counts it */
        }
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

/* --- planned entries ----------------------------------------------------------------- */

/* The packer's record layout (deswm._buffers.RECORD, "<qQQQB32sH"), then the UTF-8 uid. */
#define RECORD_SIZE 67
#define DAY_MICROS 86400000000LL

static int64_t
load_i64(const unsigned char *p)
{
    uint64_t v = 0;
    for (int i = 7; i >= 0; i--) {
        v = (v << 8) | p[i];
    }
    return (int64_t)v;
}

static uint64_t
load_u64(const unsigned char *p)
{
    return (uint64_t)load_i64(p);
}

static const char HEX[] = "0123456789abcdef";

PyDoc_STRVAR(planned_entries_doc,
"planned_entries(records, entry_type, codecs, day_prefix, layout, /)\n--\n\n"
"deswm._packer._new_items in one call: the planned entries of a group's packed records.\n"
"``codecs``: codec names by id (None where no codec has that id); ``day_prefix(day)``: the\n"
"``YYYY-MM-DDT`` of a day since the epoch; ``layout``: (inline record bytes, big record\n"
"bytes, SPILLED flag, BIG flag, codec mask, IN_BUFFER, IN_SPILL).");

static PyObject *
planned_entries(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    (void)module;
    if (nargs != 5) {
        PyErr_Format(PyExc_TypeError, "planned_entries() takes 5 arguments (%zd given)", nargs);
        return NULL;
    }
    PyObject *entry_type = args[1];
    PyObject *codecs = args[2];
    PyObject *day_prefix = args[3];
    long inline_record, big_record, spilled_flag, big_flag, codec_mask, in_buffer, in_spill;
    if (!PyType_Check(entry_type) ||
        !PyType_IsSubtype((PyTypeObject *)entry_type, &PyTuple_Type)) {
        PyErr_SetString(PyExc_TypeError, "entry_type must be a tuple subclass");
        return NULL;
    }
    if (!PyTuple_Check(codecs)) {
        PyErr_SetString(PyExc_TypeError, "codecs must be a tuple");
        return NULL;
    }
    if (!PyArg_ParseTuple(args[4], "lllllll;layout must be 7 integers", &inline_record,
                          &big_record, &spilled_flag, &big_flag, &codec_mask, &in_buffer,
                          &in_spill)) {
        return NULL;
    }
    Py_buffer view;
    if (PyObject_GetBuffer(args[0], &view, PyBUF_SIMPLE) < 0) {
        return NULL;
    }
    PyObject *items = PyList_New(0);
    PyObject *none_codec = PyUnicode_InternFromString("none");
    PyObject *source_buffer = PyLong_FromLong(in_buffer);
    PyObject *source_spill = PyLong_FromLong(in_spill);
    PyObject *origin = PyLong_FromLong(-1);
    PyObject *prefix = NULL;
    int64_t prefix_day = 0;
    const unsigned char *data = (const unsigned char *)view.buf;
    Py_ssize_t end = view.len;
    Py_ssize_t position = 0;
    if (items == NULL || none_codec == NULL || source_buffer == NULL || source_spill == NULL ||
        origin == NULL) {
        goto error;
    }
    while (position < end) {
        if (end - position < RECORD_SIZE) {
            PyErr_SetString(PyExc_ValueError, "a truncated entry record");
            goto error;
        }
        const unsigned char *record = data + position;
        int64_t micros = load_i64(record);
        uint64_t size = load_u64(record + 8);
        uint64_t length = load_u64(record + 16);
        uint64_t loc = load_u64(record + 24);
        unsigned int flags = record[32];
        const unsigned char *digest = record + 33;
        Py_ssize_t uid_len = (Py_ssize_t)(record[65] | (record[66] << 8));
        position += RECORD_SIZE;
        if (end - position < uid_len) {
            PyErr_SetString(PyExc_ValueError, "a truncated entry record");
            goto error;
        }
        PyObject *uid = PyUnicode_DecodeUTF8((const char *)data + position, uid_len, "strict");
        if (uid == NULL) {
            goto error;
        }
        position += uid_len;

        /* divmod(micros, DAY_MICROS), flooring as Python does for instants before 1970 */
        int64_t day = micros / DAY_MICROS;
        int64_t rest = micros % DAY_MICROS;
        if (rest < 0) {
            rest += DAY_MICROS;
            day -= 1;
        }
        if (prefix == NULL || day != prefix_day) {
            Py_XDECREF(prefix);
            PyObject *day_number = PyLong_FromLongLong(day);
            prefix = day_number == NULL ? NULL : PyObject_CallOneArg(day_prefix, day_number);
            Py_XDECREF(day_number);
            if (prefix == NULL) {
                Py_DECREF(uid);
                goto error;
            }
            if (!PyUnicode_Check(prefix) || !PyUnicode_IS_ASCII(prefix) ||
                PyUnicode_GET_LENGTH(prefix) > 32) {
                PyErr_SetString(PyExc_ValueError, "day_prefix must return a short ASCII str");
                Py_DECREF(uid);
                goto error;
            }
            prefix_day = day;
        }
        int64_t seconds = rest / 1000000, fraction = rest % 1000000;
        char text[64];
        Py_ssize_t prefix_len = PyUnicode_GET_LENGTH(prefix);
        memcpy(text, PyUnicode_1BYTE_DATA(prefix), (size_t)prefix_len);
        int text_len = (int)prefix_len +
                       snprintf(text + prefix_len, sizeof text - (size_t)prefix_len,
                                "%02d:%02d:%02d.%06dZ", (int)(seconds / 3600),
                                (int)(seconds / 60 % 60), (int)(seconds % 60), (int)fraction);
        char sha[64];
        for (int i = 0; i < 32; i++) {
            sha[2 * i] = HEX[digest[i] >> 4];
            sha[2 * i + 1] = HEX[digest[i] & 15];
        }
        static const char meta_a[] = "{\"created_at\":\"";
        static const char meta_b[] = "\",\"sha256\":\"";
        static const char meta_c[] = "\"}";
        Py_ssize_t meta_len =
            (Py_ssize_t)(sizeof meta_a - 1 + text_len + sizeof meta_b - 1 + 64 + sizeof meta_c - 1);
        PyObject *meta = PyBytes_FromStringAndSize(NULL, meta_len);
        PyObject *text_obj = PyUnicode_FromStringAndSize(text, text_len);
        PyObject *key = NULL;
        PyObject *entry = NULL;
        if (meta == NULL || text_obj == NULL) {
            goto entry_error;
        }
        char *out = PyBytes_AS_STRING(meta);
        memcpy(out, meta_a, sizeof meta_a - 1);
        out += sizeof meta_a - 1;
        memcpy(out, text, (size_t)text_len);
        out += text_len;
        memcpy(out, meta_b, sizeof meta_b - 1);
        out += sizeof meta_b - 1;
        memcpy(out, sha, 64);
        out += 64;
        memcpy(out, meta_c, sizeof meta_c - 1);
        key = PyTuple_Pack(2, text_obj, uid);
        if (key == NULL) {
            goto entry_error;
        }
        PyObject *codec, *big_sha, *source, *cost;
        if (flags & (unsigned long)big_flag) {
            big_sha = PyUnicode_FromStringAndSize(sha, 64);
            if (big_sha == NULL) {
                goto entry_error;
            }
            codec = none_codec;
            Py_INCREF(codec);
            source = source_buffer;
            cost = PyLong_FromLongLong((long long)big_record + uid_len + 64 + meta_len);
        }
        else {
            Py_ssize_t id = (Py_ssize_t)(flags & (unsigned long)codec_mask);
            codec = id < PyTuple_GET_SIZE(codecs) ? PyTuple_GET_ITEM(codecs, id) : Py_None;
            if (codec == Py_None) {
                PyErr_Format(PyExc_KeyError, "no codec has the id %zd", id);
                goto entry_error;
            }
            Py_INCREF(codec);
            big_sha = Py_None;
            Py_INCREF(big_sha);
            source = (flags & (unsigned long)spilled_flag) ? source_spill : source_buffer;
            unsigned long long extra =
                (unsigned long long)inline_record + (unsigned long long)(uid_len + meta_len);
            if (length <= ULLONG_MAX - extra) {
                cost = PyLong_FromUnsignedLongLong(length + extra);
            }
            else { /* not a real entry's length, but exact as Python's int would be */
                PyObject *a = PyLong_FromUnsignedLongLong(length);
                PyObject *b = PyLong_FromUnsignedLongLong(extra);
                cost = (a == NULL || b == NULL) ? NULL : PyNumber_Add(a, b);
                Py_XDECREF(a);
                Py_XDECREF(b);
            }
        }
        Py_INCREF(source);
        Py_INCREF(origin);
        PyObject *fields[11] = {
            key,
            uid,
            codec,
            PyLong_FromUnsignedLongLong(size),
            PyLong_FromUnsignedLongLong(length),
            meta,
            big_sha,
            cost,
            source,
            PyLong_FromUnsignedLongLong(loc),
            origin,
        };
        /* The fields are owned by the array from here (key, uid, meta included). */
        key = NULL;
        Py_INCREF(uid);
        Py_INCREF(meta);
        entry = ((PyTypeObject *)entry_type)->tp_alloc((PyTypeObject *)entry_type, 11);
        int failed = entry == NULL;
        for (int i = 0; i < 11; i++) {
            if (fields[i] == NULL) {
                failed = 1;
            }
        }
        if (failed) {
            for (int i = 0; i < 11; i++) {
                Py_XDECREF(fields[i]);
            }
            Py_XDECREF(entry);
            entry = NULL;
            if (!PyErr_Occurred()) {
                PyErr_NoMemory();
            }
            goto entry_error;
        }
        for (int i = 0; i < 11; i++) {
            PyTuple_SET_ITEM(entry, i, fields[i]);
        }
        if (PyList_Append(items, entry) < 0) {
            goto entry_error;
        }
        Py_DECREF(entry);
        Py_DECREF(text_obj);
        Py_DECREF(meta);
        Py_DECREF(uid);
        continue;
    entry_error:
        Py_XDECREF(entry);
        Py_XDECREF(key);
        Py_XDECREF(text_obj);
        Py_XDECREF(meta);
        Py_DECREF(uid);
        goto error;
    }
    Py_XDECREF(prefix);
    Py_DECREF(none_codec);
    Py_DECREF(source_buffer);
    Py_DECREF(source_spill);
    Py_DECREF(origin);
    PyBuffer_Release(&view);
    return items;

error:
    Py_XDECREF(prefix);
    Py_XDECREF(items);
    Py_XDECREF(none_codec);
    Py_XDECREF(source_buffer);
    Py_XDECREF(source_spill);
    Py_XDECREF(origin);
    PyBuffer_Release(&view);
    return NULL;
}

static PyMethodDef native_methods[] = {
    {"read_file", (PyCFunction)(void (*)(void))read_file, METH_FASTCALL, read_file_doc},
    {"planned_entries", (PyCFunction)(void (*)(void))planned_entries, METH_FASTCALL,
     planned_entries_doc},
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
