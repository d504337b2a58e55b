/*
 * _cbd.c - the CPython extension over libcb: cbd's circuits for Python.
 *
 * Three types, all thin:
 *   Client   one cb_client (cb_client_open); hands out circuits, reads the
 *            segment's transition history for the on_transition hooks.
 *   Circuit  one cb_circuit handle: allow() -> ticket word, record(), info().
 *   Breaker  the decorator's call path for plain (sync) functions and
 *            methods. Its vectorcall is the whole CLOSED path: cb_allow (one
 *            atomic load), the wrapped function through vectorcall, cb_record.
 *            No Python frame of ours, no argument tuple, no allocation; that
 *            is what keeps the added cost per call in the tens of ns.
 *
 * What counts as a failure is decided here, in Python's terms, exactly as
 * Powertools' CircuitBreakerConfig.counts_as_failure does: a return is
 * CB_SUCCESS; an Exception is CB_FAILURE when it matches handled_exceptions
 * (if given) or does not match ignored_exceptions (if given), else CB_IGNORED;
 * anything that is not an Exception (KeyboardInterrupt, SystemExit,
 * asyncio.CancelledError, GeneratorExit) is CB_IGNORED: it says nothing about
 * the downstream, and IGNORED hands a probe permit back.
 *
 * The rejected path builds the CircuitInfo (cb_info_get, through a factory
 * the Python package registers) and either calls on_circuit_open with the
 * call's own arguments plus circuit=info (Powertools' calling convention) or
 * raises CircuitBreakerOpenError. The wrapped function is never called.
 *
 * A Breaker whose circuit could not be bound (cbd not running when it was
 * decorated) fails open, as Powertools does when its store cannot be read:
 * the call runs uncounted, and a binder callable gets one try per second to
 * bind it.
 *
 * on_transition hooks are dispatched by one reader thread per process
 * (cbd/_dispatch.py) over Client.read_transitions, which polls the segment's
 * history ring with the GIL released. A Breaker with hooks makes sure that
 * thread runs in the current process on its first call there: a fork
 * generation (bumped by a pthread_atfork child handler) tells the hot path,
 * with one compare, that it is in a new process.
 *
 * Fork: libcb makes a client inherited across fork() safe (its own atfork
 * handlers); nothing here holds state that a child must not use.
 *
 * Closing: Client.close() frees libcb's handles, so every entry point
 * checks that its client is still open; close refuses while a thread reads
 * transitions (the dispatcher is stopped first).
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <structmember.h>

#include <errno.h>
#include <pthread.h>
#include <string.h>
#include <time.h>

#include "cb.h"

/* ---- registered Python objects (cbd/_types.py, cbd/errors.py) ----------- */

static PyObject *info_factory;     /* (info tuple) -> CircuitInfo */
static PyObject *open_error;       /* (info) -> CircuitBreakerOpenError instance */
static PyObject *persistence_error; /* class: (message, code, code_name) */
static PyObject *config_error;     /* class: (message) */
static PyObject *circuit_kwname;   /* "circuit" */
static PyObject *circuit_kwnames;  /* ("circuit",) */

/* Bumped in every forked child; Breakers compare it with the generation
 * they started their hooks in. */
static unsigned fork_generation = 1;
static void after_fork_child(void) { fork_generation++; }

static int registered(void)
{
    if (info_factory == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "cbd._cbd used before the cbd package registered its types");
        return 0;
    }
    return 1;
}

/* Raises the package's error for a negative libcb code: EINVAL is a
 * configuration fault (a bad name, a value the daemon refused), anything
 * else is about reaching cbd, which is what cbd keeps instead of a store.
 * The exception carries .code (the negative code) and .code_name. */
static PyObject *raise_code(int rc, const char *what)
{
    if (!registered())
        return NULL;
    PyObject *cls = rc == -EINVAL ? config_error : persistence_error;
    PyObject *msg = PyUnicode_FromFormat("%s: %s (%s)", what, cb_strerror(rc), cb_err_name(rc));
    if (msg == NULL)
        return NULL;
    PyObject *exc = PyObject_CallFunctionObjArgs(cls, msg, NULL);
    Py_DECREF(msg);
    if (exc == NULL)
        return NULL;
    PyObject *code = PyLong_FromLong(rc), *name = PyUnicode_FromString(cb_err_name(rc));
    if (code != NULL && name != NULL) {
        PyObject_SetAttrString(exc, "code", code);
        PyObject_SetAttrString(exc, "code_name", name);
    }
    Py_XDECREF(code);
    Py_XDECREF(name);
    PyErr_Clear();
    PyErr_SetObject((PyObject *)Py_TYPE(exc), exc);
    Py_DECREF(exc);
    return NULL;
}

/* ---- Client ---------------------------------------------------------------- */

typedef struct {
    PyObject_HEAD
    cb_client *cl;       /* NULL once closed */
    PyObject *instance;  /* str or None */
    int readers;         /* threads inside read_transitions */
} ClientObject;

static PyTypeObject ClientType;
static PyTypeObject CircuitType;

static int client_init(ClientObject *self, PyObject *args, PyObject *kw)
{
    static char *kwlist[] = {"instance", NULL};
    PyObject *instance = Py_None;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "|O:Client", kwlist, &instance))
        return -1;
    if (self->cl != NULL) {
        PyErr_SetString(PyExc_RuntimeError, "Client is already open");
        return -1;
    }
    const char *inst = NULL;
    if (instance != Py_None) {
        inst = PyUnicode_AsUTF8(instance);
        if (inst == NULL)
            return -1;
    }
    if (!registered())
        return -1;
    cb_client *cl = NULL;
    int rc;
    Py_BEGIN_ALLOW_THREADS
    rc = cb_client_open(&cl, inst);
    Py_END_ALLOW_THREADS
    if (rc < 0) {
        char what[96];
        snprintf(what, sizeof what, "cannot open cbd instance '%.40s'", inst ? inst : "(CB_INSTANCE or default)");
        raise_code(rc, what);
        return -1;
    }
    self->cl = cl;
    Py_INCREF(instance);
    Py_XSETREF(self->instance, instance);
    return 0;
}

static void client_dealloc(ClientObject *self)
{
    /* Circuits hold a reference to their client, so none is left here;
     * a reader thread holds one too. */
    if (self->cl != NULL)
        cb_client_close(self->cl);
    Py_XDECREF(self->instance);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static int client_open_or_raise(ClientObject *self)
{
    if (self->cl == NULL) {
        PyErr_SetString(PyExc_ValueError, "the cbd Client is closed");
        return 0;
    }
    return 1;
}

static PyObject *client_close(ClientObject *self, PyObject *Py_UNUSED(ignored))
{
    if (self->readers > 0) {
        PyErr_SetString(PyExc_RuntimeError, "cannot close a cbd Client while a thread reads its transitions");
        return NULL;
    }
    if (self->cl != NULL) {
        cb_client *cl = self->cl;
        self->cl = NULL;
        cb_client_close(cl);
    }
    Py_RETURN_NONE;
}

/* A function, not an expression: a field whose minimum is 0 would warn. */
static int in_bounds(unsigned long long x, unsigned long long lo, unsigned long long hi)
{
    return x >= lo && x <= hi;
}

/* Fills cfg from a {field: int} mapping; fields not in it keep the defaults. */
static int config_from_mapping(PyObject *mapping, cb_config *cfg)
{
    cb_config_init(cfg);
    PyObject *v;
#define CB__FIELD_FROM_MAPPING(name, def, min, max, help)                                                   \
    v = PyMapping_GetItemString(mapping, #name);                                                            \
    if (v == NULL) {                                                                                        \
        if (!PyErr_ExceptionMatches(PyExc_KeyError))                                                        \
            return -1;                                                                                      \
        PyErr_Clear();                                                                                      \
    } else {                                                                                                \
        unsigned long long x = PyLong_AsUnsignedLongLong(v);                                                \
        Py_DECREF(v);                                                                                       \
        if (x == (unsigned long long)-1 && PyErr_Occurred())                                                \
            x = (unsigned long long)(max) + 1;                                                              \
        PyErr_Clear();                                                                                      \
        if (!in_bounds(x, (min), (max))) {                                                                  \
            PyErr_Format(config_error, "%s must be an integer in %llu..%llu", #name,                      \
                         (unsigned long long)(min), (unsigned long long)(max));                             \
            return -1;                                                                                      \
        }                                                                                                   \
        cfg->name = (uint32_t)x;                                                                            \
    }
    CB_POLICY_FIELDS(CB__FIELD_FROM_MAPPING)
#undef CB__FIELD_FROM_MAPPING
    return 0;
}

typedef struct {
    PyObject_HEAD
    cb_circuit *c;
    ClientObject *client;
    PyObject *name;
} CircuitObject;

static PyObject *client_circuit(ClientObject *self, PyObject *args, PyObject *kw)
{
    static char *kwlist[] = {"name", "config", NULL};
    PyObject *name, *config = Py_None;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "U|O:circuit", kwlist, &name, &config))
        return NULL;
    if (!client_open_or_raise(self) || !registered())
        return NULL;
    Py_ssize_t len;
    const char *cname = PyUnicode_AsUTF8AndSize(name, &len);
    if (cname == NULL)
        return NULL;
    if (len < 1 || len > 127 || (Py_ssize_t)strlen(cname) != len) {
        PyErr_Format(config_error, "circuit name %R: must be 1..127 bytes of UTF-8 without NUL", name);
        return NULL;
    }
    cb_config cfg, *cfgp = NULL;
    if (config != Py_None) {
        if (config_from_mapping(config, &cfg) < 0)
            return NULL;
        cfgp = &cfg;
    }
    cb_circuit *c = NULL;
    int rc;
    Py_BEGIN_ALLOW_THREADS
    rc = cb_circuit_get(self->cl, cname, cfgp, &c);
    Py_END_ALLOW_THREADS
    if (rc < 0) {
        char what[192];
        snprintf(what, sizeof what, "circuit '%s'", cname);
        return raise_code(rc, what);
    }
    if (self->cl == NULL) { /* closed by another thread while we waited */
        PyErr_SetString(PyExc_ValueError, "the cbd Client was closed during the registration");
        return NULL;
    }
    CircuitObject *co = PyObject_New(CircuitObject, &CircuitType);
    if (co == NULL)
        return NULL;
    co->c = c;
    Py_INCREF(self);
    co->client = self;
    Py_INCREF(name);
    co->name = name;
    return (PyObject *)co;
}

static PyObject *transition_tuple(const cb_transition *t)
{
    return Py_BuildValue("(KsiiiIILL)", (unsigned long long)t->seq, t->name, (int)t->from, (int)t->to,
                         (int)t->source, (unsigned)t->epoch, (unsigned)t->failure_count, (long long)t->opened_at, (long long)t->time_ns);
}

#define READ_BATCH 256

/*
 * read_transitions(timeout, interval) -> (list of tuples, overruns)
 * Reads what the history ring has after this client's cursor; when it has
 * nothing, sleeps interval seconds and looks again until timeout seconds
 * passed. Without the GIL, so the calling thread costs nothing while idle.
 */
static PyObject *client_read_transitions(ClientObject *self, PyObject *args)
{
    double timeout = 0, interval = 0.01;
    if (!PyArg_ParseTuple(args, "|dd:read_transitions", &timeout, &interval))
        return NULL;
    if (!client_open_or_raise(self))
        return NULL;
    if (interval <= 0)
        interval = 0.001;
    cb_transition *buf = PyMem_RawMalloc(sizeof *buf * READ_BATCH);
    if (buf == NULL)
        return PyErr_NoMemory();
    int n = 0, overruns = 0, err = 0;
    cb_client *cl = self->cl;
    self->readers++;
    Py_BEGIN_ALLOW_THREADS
    struct timespec start, now;
    clock_gettime(CLOCK_MONOTONIC, &start);
    for (;;) {
        int rc;
        while (n < READ_BATCH && (rc = cb_next_transition(cl, &buf[n])) != 0) {
            if (rc == -EOVERFLOW)
                overruns++;
            else if (rc < 0) {
                err = rc;
                break;
            } else
                n++;
        }
        if (n > 0 || err != 0)
            break;
        clock_gettime(CLOCK_MONOTONIC, &now);
        double passed = (double)(now.tv_sec - start.tv_sec) + (double)(now.tv_nsec - start.tv_nsec) / 1e9;
        if (passed >= timeout)
            break;
        double nap = interval < timeout - passed ? interval : timeout - passed;
        struct timespec ts = {(time_t)nap, (long)((nap - (double)(time_t)nap) * 1e9)};
        nanosleep(&ts, NULL);
    }
    Py_END_ALLOW_THREADS
    self->readers--;
    if (err != 0) {
        PyMem_RawFree(buf);
        return raise_code(err, "reading cbd's transition history");
    }
    PyObject *list = PyList_New(n);
    if (list == NULL) {
        PyMem_RawFree(buf);
        return NULL;
    }
    for (int i = 0; i < n; i++) {
        PyObject *t = transition_tuple(&buf[i]);
        if (t == NULL) {
            Py_DECREF(list);
            PyMem_RawFree(buf);
            return NULL;
        }
        PyList_SET_ITEM(list, i, t);
    }
    PyMem_RawFree(buf);
    return Py_BuildValue("(Ni)", list, overruns);
}

static PyObject *client_status(ClientObject *self, PyObject *Py_UNUSED(ignored))
{
    if (!client_open_or_raise(self))
        return NULL;
    unsigned st;
    Py_BEGIN_ALLOW_THREADS
    st = cb_status(self->cl);
    Py_END_ALLOW_THREADS
    return PyLong_FromUnsignedLong(st);
}

static PyObject *client_get_closed(ClientObject *self, void *Py_UNUSED(closure))
{
    return PyBool_FromLong(self->cl == NULL);
}

static PyMethodDef client_methods[] = {
    {"close", (PyCFunction)client_close, METH_NOARGS, "Release lanes, unmap the segment; circuits become unusable."},
    {"circuit", (PyCFunction)(void (*)(void))client_circuit, METH_VARARGS | METH_KEYWORDS,
     "circuit(name, config=None) -> Circuit: find or register a circuit; config maps policy fields to ints."},
    {"read_transitions", (PyCFunction)client_read_transitions, METH_VARARGS,
     "read_transitions(timeout=0, interval=0.01) -> (list of tuples, overruns)"},
    {"status", (PyCFunction)client_status, METH_NOARGS, "cb_status() flags (may wait up to 2 s)."},
    {NULL, NULL, 0, NULL},
};

static PyGetSetDef client_getset[] = {
    {"closed", (getter)client_get_closed, NULL, "True once close() was called", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyMemberDef client_members[] = {
    {"instance", T_OBJECT, offsetof(ClientObject, instance), READONLY, "the instance asked for (None: default)"},
    {NULL, 0, 0, 0, NULL},
};

static PyTypeObject ClientType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "cbd._cbd.Client",
    .tp_basicsize = sizeof(ClientObject),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_BASETYPE,
    .tp_doc = "Client(instance=None): one connection to a cbd instance (cb_client_open).",
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)client_init,
    .tp_dealloc = (destructor)client_dealloc,
    .tp_methods = client_methods,
    .tp_getset = client_getset,
    .tp_members = client_members,
};

/* ---- Circuit --------------------------------------------------------------- */

static int circuit_usable(CircuitObject *co)
{
    if (co->client->cl == NULL) {
        PyErr_SetString(PyExc_ValueError, "the cbd Client of this circuit is closed");
        return 0;
    }
    return 1;
}

static void circuit_dealloc(CircuitObject *co)
{
    Py_XDECREF(co->client);
    Py_XDECREF(co->name);
    PyObject_Free(co);
}

static PyObject *circuit_allow(CircuitObject *co, PyObject *Py_UNUSED(ignored))
{
    if (!circuit_usable(co))
        return NULL;
    return PyLong_FromUnsignedLongLong(cb_allow(co->c).word);
}

static PyObject *circuit_record(CircuitObject *co, PyObject *args)
{
    unsigned long long word;
    int outcome;
    if (!PyArg_ParseTuple(args, "Ki:record", &word, &outcome))
        return NULL;
    if (outcome < CB_SUCCESS || outcome > CB_IGNORED) {
        PyErr_Format(PyExc_ValueError, "outcome %d is not SUCCESS (0), FAILURE (1) or IGNORED (2)", outcome);
        return NULL;
    }
    if (!circuit_usable(co))
        return NULL;
    cb_record(co->c, (cb_ticket){word}, (cb_outcome)outcome);
    Py_RETURN_NONE;
}

static int info_get(CircuitObject *co, cb_info *info)
{
    int rc = cb_info_get(co->c, info);
    if (rc < 0) {
        char what[192];
        snprintf(what, sizeof what, "reading circuit '%s'", PyUnicode_AsUTF8(co->name));
        raise_code(rc, what);
    }
    return rc;
}

/* (name, state, forced, disabled, failure_count, opened_at, epoch, {config},
 *  total_successes, total_failures, total_ignored, open_until_ns) */
static PyObject *info_build(const cb_info *info)
{
    PyObject *cfg = PyDict_New();
    if (cfg == NULL)
        return NULL;
    PyObject *v;
#define CB__FIELD_TO_DICT(name, def, min, max, help)                                                        \
    v = PyLong_FromUnsignedLong(info->config.name);                                                         \
    if (v == NULL || PyDict_SetItemString(cfg, #name, v) < 0) {                                             \
        Py_XDECREF(v);                                                                                      \
        Py_DECREF(cfg);                                                                                     \
        return NULL;                                                                                        \
    }                                                                                                       \
    Py_DECREF(v);
    CB_POLICY_FIELDS(CB__FIELD_TO_DICT)
#undef CB__FIELD_TO_DICT
    return Py_BuildValue("(siNNILINKKKL)", info->name, (int)info->state, PyBool_FromLong(info->forced),
                         PyBool_FromLong(info->disabled), (unsigned)info->failure_count, (long long)info->opened_at,
                         (unsigned)info->epoch, cfg, (unsigned long long)info->total_successes,
                         (unsigned long long)info->total_failures, (unsigned long long)info->total_ignored,
                         (long long)info->open_until_ns);
}

static PyObject *info_tuple(CircuitObject *co)
{
    cb_info info;
    if (info_get(co, &info) < 0)
        return NULL;
    return info_build(&info);
}

/* Same snapshot, as far as a CircuitInfo shows it (the name is the handle's). */
static int info_same(const cb_info *a, const cb_info *b)
{
    return a->state == b->state && a->forced == b->forced && a->disabled == b->disabled &&
           a->failure_count == b->failure_count && a->opened_at == b->opened_at && a->epoch == b->epoch &&
           memcmp(&a->config, &b->config, sizeof a->config) == 0 && a->total_successes == b->total_successes &&
           a->total_failures == b->total_failures && a->total_ignored == b->total_ignored &&
           a->open_until_ns == b->open_until_ns;
}

static PyObject *circuit_info(CircuitObject *co, PyObject *Py_UNUSED(ignored))
{
    if (!circuit_usable(co))
        return NULL;
    return info_tuple(co);
}

static PyMethodDef circuit_methods[] = {
    {"allow", (PyCFunction)circuit_allow, METH_NOARGS, "cb_allow(): the ticket word (kind in bits 0-7)."},
    {"record", (PyCFunction)circuit_record, METH_VARARGS, "record(ticket_word, outcome): cb_record()."},
    {"info", (PyCFunction)circuit_info, METH_NOARGS, "cb_info_get() as a tuple."},
    {NULL, NULL, 0, NULL},
};

static PyMemberDef circuit_members[] = {
    {"name", T_OBJECT, offsetof(CircuitObject, name), READONLY, "the circuit's name"},
    {"client", T_OBJECT, offsetof(CircuitObject, client), READONLY, "the Client it came from"},
    {NULL, 0, 0, 0, NULL},
};

static PyTypeObject CircuitType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "cbd._cbd.Circuit",
    .tp_basicsize = sizeof(CircuitObject),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "One circuit handle (Client.circuit).",
    .tp_dealloc = (destructor)circuit_dealloc,
    .tp_methods = circuit_methods,
    .tp_members = circuit_members,
};

/* ---- Breaker --------------------------------------------------------------- */

typedef struct {
    PyObject_HEAD
    vectorcallfunc vectorcall;
    CircuitObject *circuit;  /* NULL: not bound (cbd was unreachable) */
    PyObject *func;
    PyObject *on_open;       /* NULL: raise CircuitBreakerOpenError */
    PyObject *handled;       /* tuple or NULL */
    PyObject *ignored;       /* tuple or NULL */
    PyObject *hook_starter;  /* NULL: no on_transition */
    unsigned hook_generation;
    PyObject *binder;        /* () -> Circuit or None; tried once per second while unbound */
    double next_bind;        /* CLOCK_MONOTONIC seconds */
    PyObject *info;          /* the last CircuitInfo handed out, for info_raw; or NULL */
    cb_info info_raw;
    PyObject *dict;
    PyObject *weakrefs;
} BreakerObject;

static cb_outcome classify(BreakerObject *b)
{
    PyObject *type = PyErr_Occurred();
    if (!PyErr_GivenExceptionMatches(type, PyExc_Exception))
        return CB_IGNORED;
    if (b->handled != NULL)
        return PyErr_GivenExceptionMatches(type, b->handled) ? CB_FAILURE : CB_IGNORED;
    if (b->ignored != NULL)
        return PyErr_GivenExceptionMatches(type, b->ignored) ? CB_IGNORED : CB_FAILURE;
    return CB_FAILURE;
}

static double monotonic_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC_COARSE, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* The CircuitInfo of a rejection. CircuitInfo is immutable, so while the
 * circuit stays as it was (an OPEN circuit rejecting call after call) the
 * same object is handed out again: building one costs microseconds. */
static PyObject *breaker_info(BreakerObject *b)
{
    cb_info raw;
    if (info_get(b->circuit, &raw) < 0)
        return NULL;
    if (b->info != NULL && info_same(&raw, &b->info_raw)) {
        Py_INCREF(b->info);
        return b->info;
    }
    PyObject *tuple = info_build(&raw);
    if (tuple == NULL)
        return NULL;
    PyObject *info = PyObject_CallOneArg(info_factory, tuple);
    Py_DECREF(tuple);
    if (info == NULL)
        return NULL;
    Py_INCREF(info);
    Py_XSETREF(b->info, info);
    b->info_raw = raw;
    return info;
}

/* Calls on_open(*args, **kwargs, circuit=info) or raises the open error. */
static PyObject *breaker_rejected(BreakerObject *b, PyObject *const *args, size_t nargsf, PyObject *kwnames)
{
    PyObject *info = breaker_info(b);
    if (info == NULL)
        return NULL;
    if (b->on_open == NULL) {
        PyObject *exc = PyObject_CallOneArg(open_error, info);
        Py_DECREF(info);
        if (exc != NULL) {
            PyErr_SetObject((PyObject *)Py_TYPE(exc), exc);
            Py_DECREF(exc);
        }
        return NULL;
    }
    Py_ssize_t nargs = PyVectorcall_NARGS(nargsf);
    Py_ssize_t nkw = kwnames != NULL ? PyTuple_GET_SIZE(kwnames) : 0;
    if (nkw == 0 && nargs < 8) { /* the usual shape: no allocation */
        PyObject *small[9];
        for (Py_ssize_t i = 0; i < nargs; i++)
            small[i] = args[i];
        small[nargs] = info;
        PyObject *res = PyObject_Vectorcall(b->on_open, small, (size_t)nargs, circuit_kwnames);
        Py_DECREF(info);
        return res;
    }
    PyObject **all = PyMem_Malloc(sizeof(PyObject *) * (size_t)(nargs + nkw + 1));
    PyObject *names = PyTuple_New(nkw + 1);
    PyObject *res = NULL;
    if (all == NULL || names == NULL) {
        PyErr_NoMemory();
        goto out;
    }
    for (Py_ssize_t i = 0; i < nargs + nkw; i++)
        all[i] = args[i];
    all[nargs + nkw] = info;
    for (Py_ssize_t i = 0; i < nkw; i++) {
        PyObject *k = PyTuple_GET_ITEM(kwnames, i);
        Py_INCREF(k);
        PyTuple_SET_ITEM(names, i, k);
    }
    Py_INCREF(circuit_kwname);
    PyTuple_SET_ITEM(names, nkw, circuit_kwname);
    res = PyObject_Vectorcall(b->on_open, all, (size_t)nargs, names);
out:
    PyMem_Free(all);
    Py_XDECREF(names);
    Py_DECREF(info);
    return res;
}

/* Not bound: try the binder at most once a second, else run uncounted. */
static PyObject *breaker_unbound(BreakerObject *b, PyObject *const *args, size_t nargsf, PyObject *kwnames)
{
    double now = monotonic_s();
    if (b->binder != NULL && now >= b->next_bind) {
        b->next_bind = now + 1.0;
        PyObject *c = PyObject_CallNoArgs(b->binder);
        if (c == NULL)
            PyErr_WriteUnraisable(b->binder);
        else if (Py_IS_TYPE(c, &CircuitType)) {
            Py_XSETREF(b->circuit, (CircuitObject *)c);
            c = NULL;
        }
        Py_XDECREF(c);
    }
    return PyObject_Vectorcall(b->func, args, nargsf, kwnames);
}

static PyObject *breaker_vectorcall(PyObject *callable, PyObject *const *args, size_t nargsf, PyObject *kwnames)
{
    BreakerObject *b = (BreakerObject *)callable;
    CircuitObject *co = b->circuit;
    if (co == NULL || co->client->cl == NULL)
        return breaker_unbound(b, args, nargsf, kwnames);
    if (b->hook_starter != NULL && b->hook_generation != fork_generation) {
        b->hook_generation = fork_generation;
        PyObject *r = PyObject_CallNoArgs(b->hook_starter);
        if (r == NULL)
            PyErr_WriteUnraisable(b->hook_starter); /* hooks never fail a call */
        Py_XDECREF(r);
    }
    cb_ticket t = cb_allow(co->c);
    if (!cb_permitted(t))
        return breaker_rejected(b, args, nargsf, kwnames);
    /* Keep the circuit alive across the call: the function may rebind us. */
    Py_INCREF(co);
    PyObject *res = PyObject_Vectorcall(b->func, args, nargsf, kwnames);
    if (co->client->cl != NULL)
        cb_record(co->c, t, res != NULL ? CB_SUCCESS : classify(b));
    Py_DECREF(co);
    return res;
}

static PyObject *breaker_new(PyTypeObject *type, PyObject *args, PyObject *kw)
{
    static char *kwlist[] = {"func", "circuit", "on_open", "handled", "ignored", "hook_starter", "binder", NULL};
    PyObject *func, *circuit = Py_None, *on_open = Py_None, *handled = Py_None, *ignored = Py_None,
                    *hook_starter = Py_None, *binder = Py_None;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "O|OOOOOO:Breaker", kwlist, &func, &circuit, &on_open, &handled,
                                     &ignored, &hook_starter, &binder))
        return NULL;
    if (!registered())
        return NULL;
    if (!PyCallable_Check(func)) {
        PyErr_SetString(PyExc_TypeError, "Breaker: func must be callable");
        return NULL;
    }
    if (circuit != Py_None && !Py_IS_TYPE(circuit, &CircuitType)) {
        PyErr_SetString(PyExc_TypeError, "Breaker: circuit must be a cbd._cbd.Circuit or None");
        return NULL;
    }
    if ((handled != Py_None && !PyTuple_Check(handled)) || (ignored != Py_None && !PyTuple_Check(ignored))) {
        PyErr_SetString(PyExc_TypeError, "Breaker: handled and ignored must be tuples or None");
        return NULL;
    }
    BreakerObject *b = (BreakerObject *)type->tp_alloc(type, 0);
    if (b == NULL)
        return NULL;
    b->vectorcall = breaker_vectorcall;
#define KEEP(field, obj) b->field = (obj) == Py_None ? NULL : (Py_INCREF(obj), (void *)(obj))
    KEEP(circuit, circuit);
    Py_INCREF(func);
    b->func = func;
    KEEP(on_open, on_open);
    KEEP(handled, handled);
    KEEP(ignored, ignored);
    KEEP(hook_starter, hook_starter);
    KEEP(binder, binder);
#undef KEEP
    b->hook_generation = 0;
    b->next_bind = 0;
    return (PyObject *)b;
}

static int breaker_traverse(BreakerObject *b, visitproc visit, void *arg)
{
    Py_VISIT(b->circuit);
    Py_VISIT(b->func);
    Py_VISIT(b->on_open);
    Py_VISIT(b->handled);
    Py_VISIT(b->ignored);
    Py_VISIT(b->hook_starter);
    Py_VISIT(b->binder);
    Py_VISIT(b->info);
    Py_VISIT(b->dict);
    return 0;
}

static int breaker_clear(BreakerObject *b)
{
    Py_CLEAR(b->circuit);
    Py_CLEAR(b->func);
    Py_CLEAR(b->on_open);
    Py_CLEAR(b->handled);
    Py_CLEAR(b->ignored);
    Py_CLEAR(b->hook_starter);
    Py_CLEAR(b->binder);
    Py_CLEAR(b->info);
    Py_CLEAR(b->dict);
    return 0;
}

static void breaker_dealloc(BreakerObject *b)
{
    PyObject_GC_UnTrack(b);
    if (b->weakrefs != NULL)
        PyObject_ClearWeakRefs((PyObject *)b);
    breaker_clear(b);
    Py_TYPE(b)->tp_free((PyObject *)b);
}

/* Methods: bound like a function, so self reaches the wrapped function. */
static PyObject *breaker_descr_get(PyObject *self, PyObject *obj, PyObject *Py_UNUSED(type))
{
    if (obj == NULL || obj == Py_None) {
        Py_INCREF(self);
        return self;
    }
    return PyMethod_New(self, obj);
}

static PyObject *breaker_get_circuit(BreakerObject *b, void *Py_UNUSED(closure))
{
    if (b->circuit == NULL)
        Py_RETURN_NONE;
    Py_INCREF(b->circuit);
    return (PyObject *)b->circuit;
}

static PyObject *breaker_get_func(BreakerObject *b, void *Py_UNUSED(closure))
{
    Py_INCREF(b->func);
    return b->func;
}

static PyGetSetDef breaker_getset[] = {
    {"_circuit", (getter)breaker_get_circuit, NULL, "the bound _cbd.Circuit, or None", NULL},
    {"_func", (getter)breaker_get_func, NULL, "the wrapped function", NULL},
    {"__dict__", PyObject_GenericGetDict, PyObject_GenericSetDict, NULL, NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyTypeObject BreakerType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "cbd._cbd.Breaker",
    .tp_basicsize = sizeof(BreakerObject),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC | Py_TPFLAGS_HAVE_VECTORCALL | Py_TPFLAGS_METHOD_DESCRIPTOR,
    .tp_doc = "A function wrapped by circuit_breaker (sync functions and methods).",
    .tp_new = breaker_new,
    .tp_dealloc = (destructor)breaker_dealloc,
    .tp_traverse = (traverseproc)breaker_traverse,
    .tp_clear = (inquiry)breaker_clear,
    .tp_call = PyVectorcall_Call,
    .tp_vectorcall_offset = offsetof(BreakerObject, vectorcall),
    .tp_descr_get = breaker_descr_get,
    .tp_getset = breaker_getset,
    .tp_dictoffset = offsetof(BreakerObject, dict),
    .tp_weaklistoffset = offsetof(BreakerObject, weakrefs),
};

/* ---- module ---------------------------------------------------------------- */

static PyObject *mod_register(PyObject *Py_UNUSED(m), PyObject *args)
{
    PyObject *a, *b, *c, *d;
    if (!PyArg_ParseTuple(args, "OOOO:_register", &a, &b, &c, &d))
        return NULL;
    Py_INCREF(a);
    Py_XSETREF(info_factory, a);
    Py_INCREF(b);
    Py_XSETREF(open_error, b);
    Py_INCREF(c);
    Py_XSETREF(persistence_error, c);
    Py_INCREF(d);
    Py_XSETREF(config_error, d);
    Py_RETURN_NONE;
}

static PyObject *mod_strerror(PyObject *Py_UNUSED(m), PyObject *arg)
{
    long code = PyLong_AsLong(arg);
    if (code == -1 && PyErr_Occurred())
        return NULL;
    return Py_BuildValue("(ss)", cb_err_name((int)code), cb_strerror((int)code));
}

static PyObject *mod_version(PyObject *Py_UNUSED(m), PyObject *Py_UNUSED(ignored))
{
    return PyUnicode_FromString(cb_version());
}

static PyMethodDef module_methods[] = {
    {"_register", mod_register, METH_VARARGS, "register the package's info factory and error classes"},
    {"strerror", mod_strerror, METH_O, "strerror(code) -> (name, text) of a libcb error code"},
    {"libcb_version", mod_version, METH_NOARGS, "the linked libcb's version"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module_def = {
    PyModuleDef_HEAD_INIT, .m_name = "cbd._cbd", .m_doc = "cbd's libcb binding (use the cbd package)",
    .m_size = -1, .m_methods = module_methods,
};

/* POLICY_FIELDS: ((name, default, min, max, help), ...) from CB_POLICY_FIELDS. */
static PyObject *policy_fields(void)
{
    PyObject *list = PyList_New(0), *item;
    if (list == NULL)
        return NULL;
#define CB__FIELD_ITEM(name, def, min, max, help)                                                           \
    item = Py_BuildValue("(sKKKs)", #name, (unsigned long long)(def), (unsigned long long)(min),            \
                         (unsigned long long)(max), help);                                                  \
    if (item == NULL || PyList_Append(list, item) < 0) {                                                    \
        Py_XDECREF(item);                                                                                   \
        Py_DECREF(list);                                                                                    \
        return NULL;                                                                                        \
    }                                                                                                       \
    Py_DECREF(item);
    CB_POLICY_FIELDS(CB__FIELD_ITEM)
#undef CB__FIELD_ITEM
    PyObject *t = PyList_AsTuple(list);
    Py_DECREF(list);
    return t;
}

PyMODINIT_FUNC PyInit__cbd(void)
{
    if (PyType_Ready(&ClientType) < 0 || PyType_Ready(&CircuitType) < 0 || PyType_Ready(&BreakerType) < 0)
        return NULL;
    PyObject *m = PyModule_Create(&module_def);
    if (m == NULL)
        return NULL;
    circuit_kwname = PyUnicode_InternFromString("circuit");
    circuit_kwnames = circuit_kwname != NULL ? PyTuple_Pack(1, circuit_kwname) : NULL;
    if (circuit_kwnames == NULL || PyModule_AddType(m, &ClientType) < 0 || PyModule_AddType(m, &CircuitType) < 0 ||
        PyModule_AddType(m, &BreakerType) < 0 || PyModule_AddObject(m, "POLICY_FIELDS", policy_fields()) < 0)
        goto fail;
    struct {
        const char *name;
        long value;
    } constants[] = {
        {"CLOSED", CB_CLOSED},
        {"OPEN", CB_OPEN},
        {"HALF_OPEN", CB_HALF_OPEN},
        {"SUCCESS", CB_SUCCESS},
        {"FAILURE", CB_FAILURE},
        {"IGNORED", CB_IGNORED},
        {"TICKET_REJECTED", CB_TICKET_REJECTED},
        {"TICKET_ALLOWED", CB_TICKET_ALLOWED},
        {"TICKET_PROBE", CB_TICKET_PROBE},
        {"TICKET_BYPASS", CB_TICKET_BYPASS},
        {"STATUS_RUNNING", CB_STATUS_RUNNING},
        {"STATUS_RESTARTED", CB_STATUS_RESTARTED},
        {"STATUS_STALE", CB_STATUS_STALE},
        {"STATUS_DISABLED", CB_STATUS_DISABLED},
        {"STATUS_REMAPPED", CB_STATUS_REMAPPED},
        {"SOURCE_LOCAL", CB_SOURCE_LOCAL},
        {"SOURCE_REMOTE", CB_SOURCE_REMOTE},
        {"SOURCE_OPERATOR", CB_SOURCE_OPERATOR},
        {"SOURCE_TIMER", CB_SOURCE_TIMER},
        {"SOURCE_RESTORE", CB_SOURCE_RESTORE},
    };
    for (size_t i = 0; i < sizeof constants / sizeof constants[0]; i++)
        if (PyModule_AddIntConstant(m, constants[i].name, constants[i].value) < 0)
            goto fail;
    if (pthread_atfork(NULL, NULL, after_fork_child) != 0) {
        PyErr_SetString(PyExc_OSError, "pthread_atfork failed");
        goto fail;
    }
    return m;
fail:
    Py_DECREF(m);
    return NULL;
}
