/* xentcy's fused cross-entropy as an XLA FFI custom call ("xentcy_cross_entropy", CPU), so
 * that JAX runs the kernel on XLA's own buffers: jax.pure_callback copies every result into
 * XLA's memory, and at (2048, 32000) float32 that copy cost more than the kernel (measured,
 * JAX 0.10: 243 ms for a callback that returned a ready 262 MB gradient, against 24 ms for
 * the kernel). Used by xentcy/jax.py; the Cython side (_core.pyx, xla_cross_entropy) runs it.
 *
 * The structs below are the part of XLA's FFI C API (xla/ffi/api/c_api.h, OpenXLA, Apache
 * License 2.0) that this call reads, with XLA's layouts. They are read through XLA's
 * pointers, never allocated here; every size XLA reports is checked before a field past the
 * first is read. The handler reports FFI API version 0.1, which every jaxlib with the typed
 * FFI (jax.ffi) accepts.
 *
 * The call, as xentcy/jax.py makes it:
 *   args:  A (N, C) float32 or float64; the target: class indices (N,) int32 or int64, or
 *          probabilities (N, C) of A's dtype; the weights (C,) of A's dtype, or (0,) for none
 *   rets:  the loss, () for "mean" and "sum" or (N,) for "none", float32 or float64; and,
 *          optionally, the gradient (N, C) of A's dtype
 *   attrs: ignore_index (int64), label_smoothing (float64), reduction (int32: 0 mean,
 *          1 sum, 2 none); and, each optional (absent: its default), z_loss (float64, 0),
 *          temperature (float64, 1), softcap (float64, 0: none) and denominator (float64,
 *          0: the call's own D)
 * Whatever reaches it, the handler reads and writes only inside these buffers: a call that
 * does not fit is an error returned to XLA.
 */
#ifndef XENT_XLA_H
#define XENT_XLA_H

#include <stddef.h>
#include <stdint.h>
#include <string.h>
#if defined(__linux__)
#include <sys/mman.h>
#include <unistd.h>
#endif

typedef struct XLA_FFI_Extension_Base {
    size_t struct_size;
    int type; /* XLA_FFI_Extension_Type: 1 = metadata */
    struct XLA_FFI_Extension_Base* next;
} XLA_FFI_Extension_Base;

typedef struct XLA_FFI_Error XLA_FFI_Error;

typedef struct {
    size_t struct_size;
    XLA_FFI_Extension_Base* extension_start;
    const char* message;
    int errc; /* XLA_FFI_Error_Code */
} XLA_FFI_Error_Create_Args;

typedef struct {
    size_t struct_size;
    XLA_FFI_Extension_Base* extension_start;
    int major_version;
    int minor_version;
} XLA_FFI_Api_Version;

typedef struct {
    size_t struct_size;
    XLA_FFI_Extension_Base* extension_start;
    XLA_FFI_Api_Version api_version;
    const void* internal_api;
    XLA_FFI_Error* (*XLA_FFI_Error_Create)(XLA_FFI_Error_Create_Args* args);
    /* ... more functions, not used here */
} XLA_FFI_Api;

typedef struct {
    size_t struct_size;
    XLA_FFI_Api_Version api_version;
    uint32_t traits;
} XLA_FFI_Metadata;

typedef struct {
    XLA_FFI_Extension_Base extension_base;
    XLA_FFI_Metadata* metadata;
} XLA_FFI_Metadata_Extension;

typedef struct {
    size_t struct_size;
    XLA_FFI_Extension_Base* extension_start;
    int dtype; /* XLA_FFI_DataType */
    void* data;
    int64_t rank;
    int64_t* dims;
} XLA_FFI_Buffer;

typedef struct {
    const char* ptr;
    size_t len;
} XLA_FFI_ByteSpan;

typedef struct {
    int dtype;
    void* value;
} XLA_FFI_Scalar;

typedef struct {
    size_t struct_size;
    XLA_FFI_Extension_Base* extension_start;
    int64_t size;
    int* types; /* 1 = buffer */
    void** items;
} XLA_FFI_List;   /* XLA_FFI_Args and XLA_FFI_Rets: the same layout */

typedef struct {
    size_t struct_size;
    XLA_FFI_Extension_Base* extension_start;
    int64_t size;
    int* types; /* 3 = scalar */
    XLA_FFI_ByteSpan** names;
    void** attrs;
} XLA_FFI_Attrs;

typedef struct {
    size_t struct_size;
    XLA_FFI_Extension_Base* extension_start;
    const XLA_FFI_Api* api;
    void* ctx;
    int stage; /* 3 = execute */
    XLA_FFI_List args;
    XLA_FFI_List rets;
    XLA_FFI_Attrs attrs;
} XLA_FFI_CallFrame;

enum {
    XENT_XLA_S32 = 4,
    XENT_XLA_S64 = 5,
    XENT_XLA_F32 = 11,
    XENT_XLA_F64 = 12,
    XENT_XLA_INVALID_ARGUMENT = 3,
    XENT_XLA_RESOURCE_EXHAUSTED = 8,
};

#define XENT_XLA_END(type, field) (offsetof(type, field) + sizeof(((type*)0)->field))

/* One call, read off its frame. */
typedef struct {
    const char* A;
    int f64;              /* A (and Q, w, G) are float64, else float32 */
    int64_t N, C;
    const void* y;        /* class indices, or NULL with Q */
    int y64;              /* y is int64, else int32 */
    const char* Q;
    const void* w;        /* C weights, or NULL */
    void* loss;
    int loss_f64;
    char* G;              /* or NULL: no gradient asked */
    int64_t ignore_index;
    double eps;
    int reduction;        /* 0 mean, 1 sum, 2 none */
    double z_loss, temperature, softcap;
    double denominator;   /* the caller's D for the mean, or 0: the call's own */
} xent_xla_call;

/* Answers XLA's metadata query (a frame whose extensions hold one): 1 if it was one. */
static int xent_xla_metadata(XLA_FFI_CallFrame* frame) {
    XLA_FFI_Extension_Base* ext = frame->extension_start;
    for (; ext != NULL; ext = ext->next) {
        if (ext->type != 1) continue;
        if (ext->struct_size < XENT_XLA_END(XLA_FFI_Metadata_Extension, metadata)) return 1;
        XLA_FFI_Metadata* m = ((XLA_FFI_Metadata_Extension*)ext)->metadata;
        if (m != NULL && m->struct_size >= XENT_XLA_END(XLA_FFI_Metadata, traits)) {
            m->api_version.struct_size = XENT_XLA_END(XLA_FFI_Api_Version, minor_version);
            m->api_version.extension_start = NULL;
            m->api_version.major_version = 0;
            m->api_version.minor_version = 1;
            m->traits = 0;
        }
        return 1;
    }
    return 0;
}

static XLA_FFI_Error* xent_xla_error(const XLA_FFI_CallFrame* frame, int code, const char* message) {
    XLA_FFI_Error_Create_Args args;
    args.struct_size = XENT_XLA_END(XLA_FFI_Error_Create_Args, errc);
    args.extension_start = NULL;
    args.message = message;
    args.errc = code;
    return frame->api->XLA_FFI_Error_Create(&args);
}

/* The buffer at position i of a list, or NULL where there is none. */
static const XLA_FFI_Buffer* xent_xla_buffer(const XLA_FFI_List* list, int64_t i) {
    if (i >= list->size || list->types[i] != 1) return NULL;
    const XLA_FFI_Buffer* b = (const XLA_FFI_Buffer*)list->items[i];
    return b->struct_size >= XENT_XLA_END(XLA_FFI_Buffer, dims) ? b : NULL;
}

/* Whether b has dtype ``dtype`` and the given rank and dims (rank <= 2). */
static int xent_xla_is(const XLA_FFI_Buffer* b, int dtype, int64_t rank, int64_t d0, int64_t d1) {
    if (b == NULL || b->dtype != dtype || b->rank != rank) return 0;
    if (rank >= 1 && b->dims[0] != d0) return 0;
    if (rank >= 2 && b->dims[1] != d1) return 0;
    return 1;
}

/* The scalar attribute ``name`` of dtype ``dtype``, or NULL. */
static const void* xent_xla_attr(const XLA_FFI_Attrs* attrs, const char* name, int dtype) {
    size_t len = strlen(name);
    for (int64_t i = 0; i < attrs->size; i++) {
        const XLA_FFI_ByteSpan* n = attrs->names[i];
        if (n->len != len || memcmp(n->ptr, name, len) != 0) continue;
        if (attrs->types[i] != 3) return NULL;
        const XLA_FFI_Scalar* s = (const XLA_FFI_Scalar*)attrs->attrs[i];
        return s->dtype == dtype ? s->value : NULL;
    }
    return NULL;
}

/* Reads the call off the frame: NULL, or what does not fit (a message for the caller). */
static const char* xent_xla_parse(const XLA_FFI_CallFrame* frame, xent_xla_call* c) {
    if (frame->struct_size < XENT_XLA_END(XLA_FFI_CallFrame, attrs))
        return "xentcy_cross_entropy: an XLA FFI call frame older than API 0.1";
    if (frame->stage != 3) return "xentcy_cross_entropy: called outside the execute stage";
    const XLA_FFI_Buffer* a = xent_xla_buffer(&frame->args, 0);
    const XLA_FFI_Buffer* t = xent_xla_buffer(&frame->args, 1);
    const XLA_FFI_Buffer* w = xent_xla_buffer(&frame->args, 2);
    if (frame->args.size != 3 || a == NULL || t == NULL || w == NULL)
        return "xentcy_cross_entropy takes 3 buffers: logits, target, weight";
    if (a->rank != 2 || (a->dtype != XENT_XLA_F32 && a->dtype != XENT_XLA_F64))
        return "xentcy_cross_entropy: the logits must be (N, C) float32 or float64";
    c->f64 = a->dtype == XENT_XLA_F64;
    c->A = (const char*)a->data;
    c->N = a->dims[0];
    c->C = a->dims[1];
    if (c->C < 1 || c->N < 0) return "xentcy_cross_entropy: the logits must have at least one class";
    c->y = NULL;
    c->Q = NULL;
    if (xent_xla_is(t, XENT_XLA_S32, 1, c->N, 0) || xent_xla_is(t, XENT_XLA_S64, 1, c->N, 0)) {
        c->y = t->data;
        c->y64 = t->dtype == XENT_XLA_S64;
    } else if (xent_xla_is(t, a->dtype, 2, c->N, c->C)) {
        c->Q = (const char*)t->data;
    } else {
        return "xentcy_cross_entropy: the target must be (N,) int32 or int64, or (N, C) of the logits' dtype";
    }
    if (xent_xla_is(w, a->dtype, 1, c->C, 0)) c->w = w->data;
    else if (xent_xla_is(w, a->dtype, 1, 0, 0)) c->w = NULL;
    else return "xentcy_cross_entropy: the weight must be (C,) or (0,) of the logits' dtype";

    const int64_t* ignore = (const int64_t*)xent_xla_attr(&frame->attrs, "ignore_index", XENT_XLA_S64);
    const double* eps = (const double*)xent_xla_attr(&frame->attrs, "label_smoothing", XENT_XLA_F64);
    const int32_t* reduction = (const int32_t*)xent_xla_attr(&frame->attrs, "reduction", XENT_XLA_S32);
    if (ignore == NULL || eps == NULL || reduction == NULL || *reduction < 0 || *reduction > 2)
        return "xentcy_cross_entropy: needs the attributes ignore_index (int64), "
               "label_smoothing (float64) and reduction (int32, 0 to 2)";
    c->ignore_index = *ignore;
    c->eps = *eps;
    c->reduction = *reduction;
    const double* z_loss = (const double*)xent_xla_attr(&frame->attrs, "z_loss", XENT_XLA_F64);
    const double* temperature = (const double*)xent_xla_attr(&frame->attrs, "temperature", XENT_XLA_F64);
    const double* softcap = (const double*)xent_xla_attr(&frame->attrs, "softcap", XENT_XLA_F64);
    const double* denominator = (const double*)xent_xla_attr(&frame->attrs, "denominator", XENT_XLA_F64);
    c->z_loss = z_loss ? *z_loss : 0.0;
    c->temperature = temperature ? *temperature : 1.0;
    c->softcap = softcap ? *softcap : 0.0;
    c->denominator = denominator ? *denominator : 0.0;
    /* (written so that NaN fails too) */
    if (!(c->z_loss >= 0 && c->z_loss <= 1e308 && c->temperature >= 1e-15 && c->temperature <= 1e15 &&
          (c->softcap == 0 || (c->softcap >= 1e-15 && c->softcap <= 1e15)) && c->denominator >= 0 &&
          c->denominator <= 1e308))
        return "xentcy_cross_entropy: z_loss and denominator must be finite and >= 0, temperature in "
               "[1e-15, 1e15], softcap 0 or in that range";

    const XLA_FFI_Buffer* loss = xent_xla_buffer(&frame->rets, 0);
    const XLA_FFI_Buffer* g = xent_xla_buffer(&frame->rets, 1);
    int64_t loss_rank = c->reduction == 2 ? 1 : 0;
    if (frame->rets.size < 1 || frame->rets.size > 2 ||
        !(xent_xla_is(loss, XENT_XLA_F32, loss_rank, c->N, 0) ||
          xent_xla_is(loss, XENT_XLA_F64, loss_rank, c->N, 0)))
        return "xentcy_cross_entropy: returns the loss, () or (N,) float32 or float64, and the gradient";
    c->loss = loss->data;
    c->loss_f64 = loss->dtype == XENT_XLA_F64;
    c->G = NULL;
    if (frame->rets.size == 2) {
        if (!xent_xla_is(g, a->dtype, 2, c->N, c->C))
            return "xentcy_cross_entropy: the gradient must be (N, C) of the logits' dtype";
        c->G = (char*)g->data;
    }
    return NULL;
}

/* The class index of row i, as an int64. */
static int64_t xent_xla_index(const xent_xla_call* c, int64_t i) {
    return c->y64 ? ((const int64_t*)c->y)[i] : (int64_t)((const int32_t*)c->y)[i];
}

/* D, what the mean divides by (torch's rule): the sum of w[y] over the samples whose index is
 * in [0, C) (their count without weights); the number of samples for probabilities. Rows of
 * an index out of range are NaN rows (the kernel's rule), whatever D is. */
static double xent_xla_denominator(const xent_xla_call* c) {
    if (c->y == NULL) return (double)c->N;
    double d = 0.0;
    int64_t count = 0;
    for (int64_t i = 0; i < c->N; i++) {
        int64_t v = xent_xla_index(c, i);
        if (v == c->ignore_index || v < 0 || v >= c->C) continue;
        if (c->w == NULL) count++;
        else d += c->f64 ? ((const double*)c->w)[v] : (double)((const float*)c->w)[v];
    }
    return c->w == NULL ? (double)count : d;
}

/* Asks the kernel for transparent huge pages under the part of [p, p + n) that spans whole
 * pages, as NumPy does for its own arrays of 4 MiB and more. XLA's CPU allocator hands out
 * fresh memory for each large result, and without huge pages the page faults of its first
 * write cost more than the kernel: at (2048, 32000) float32 (262 MB) the call took 160 ms
 * against 15 ms on memory already faulted in; with the advice, see benchmarks/cpu-notes.md.
 * Advice only: the memory's contents and ownership are unchanged, and a kernel that does
 * not take it (THP off) changes nothing. */
static void xent_xla_advise_huge_pages(void* p, size_t n) {
#if defined(__linux__) && defined(MADV_HUGEPAGE)
    if (p == NULL || n < ((size_t)4 << 20)) return;
    long page = sysconf(_SC_PAGESIZE);
    if (page <= 0) return;
    uintptr_t begin = ((uintptr_t)p + (uintptr_t)page - 1) & ~((uintptr_t)page - 1);
    uintptr_t end = ((uintptr_t)p + n) & ~((uintptr_t)page - 1);
    if (end > begin) madvise((void*)begin, end - begin, MADV_HUGEPAGE);
#else
    (void)p;
    (void)n;
#endif
}

#endif
