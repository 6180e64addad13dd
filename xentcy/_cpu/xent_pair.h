/* xent_rows.h for float and for double, under the instruction set XENT_ISA. */
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wpsabi"

#define XENT_T float
#define XENT_F32 1
#define XN(name) XENT_CAT(name, XENT_ISA, f32)
#include "xent_rows.h"
#undef XENT_T
#undef XENT_F32
#undef XN

#define XENT_T double
#define XENT_F32 0
#define XN(name) XENT_CAT(name, XENT_ISA, f64)
#include "xent_rows.h"
#undef XENT_T
#undef XENT_F32
#undef XN

#pragma GCC diagnostic pop
