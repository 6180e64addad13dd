/* The CPU kernels' plain path (XENT_PLAIN: vector extensions only, as aarch64 builds them),
 * driven from tests/test_cpu_plain_path.py through raw binary files:
 *
 *   plain_path exp   DTYPE IN OUT N            exp of N values
 *   plain_path xent  DTYPE A Y OUT N C EPS     per-row losses (double), then the gradient
 *                                             of the mean (1/N each row), of class indices Y
 *                                             (int64; -100 ignored)
 *   plain_path xentq DTYPE A Q OUT N C EPS     the same for class probabilities Q (DTYPE)
 *   plain_path lsm   DTYPE A OUT N C           log_softmax of each row
 *   plain_path lse   DTYPE A OUT N C           logsumexp of each row (DTYPE)
 *
 * DTYPE is f32 or f64. Built by the test with the system C compiler.
 */
#include "xent_dispatch.h"

#include <stdio.h>
#include <stdlib.h>

static void* slurp(const char* path, size_t bytes) {
    void* p = malloc(bytes ? bytes : 1);
    FILE* f = fopen(path, "rb");
    if (!p || !f || fread(p, 1, bytes, f) != bytes) {
        fprintf(stderr, "cannot read %zu bytes from %s\n", bytes, path);
        exit(2);
    }
    fclose(f);
    return p;
}

static void spill(const char* path, const void* p, size_t bytes, const char* mode) {
    FILE* f = fopen(path, mode);
    if (!f || fwrite(p, 1, bytes, f) != bytes) {
        fprintf(stderr, "cannot write %s\n", path);
        exit(2);
    }
    fclose(f);
}

int main(int argc, char** argv) {
    const xent_kernels* k = &xent_tables[xent_best_isa()];
    if (argc < 3 || XENT_X86) {
        fprintf(stderr, "usage: plain_path exp|xent|xentq|lsm|lse f32|f64 ... (a XENT_PLAIN build)\n");
        return 2;
    }
    int f64 = argv[2][1] == '6';
    size_t item = f64 ? sizeof(double) : sizeof(float);
    if (argv[1][0] == 'e' && argc == 6) {
        ptrdiff_t n = atol(argv[5]);
        void* in = slurp(argv[3], n * item);
        void* out = malloc(n * item + 1);
        if (f64)
            k->exp_f64(in, out, n);
        else
            k->exp_f32(in, out, n);
        spill(argv[4], out, n * item, "wb");
        return 0;
    }
    if (argv[1][0] == 'l' && argc == 7) {
        ptrdiff_t N = atol(argv[5]), C = atol(argv[6]);
        int lse = argv[1][2] == 'e';
        xent_args a = {0};
        a.A = slurp(argv[3], N * C * item);
        a.a_stride = C * item;
        a.rows_out = malloc(N * C * item);
        a.rows_out_stride = C * item;
        a.per_row_out = malloc(N * item);
        a.C = C;
        a.log_space = 1;
        void* scratch = malloc((C + C / 64 + 2) * item);
        if (lse)
            k->logsumexp[f64](&a, 0, N, scratch);
        else
            k->softmax[f64](&a, 0, N, scratch);
        spill(argv[4], lse ? a.per_row_out : a.rows_out, lse ? N * item : N * C * item, "wb");
        return 0;
    }
    if (argv[1][0] == 'x' && argc == 9) {
        ptrdiff_t N = atol(argv[6]), C = atol(argv[7]);
        xent_args a = {0};
        a.A = slurp(argv[3], N * C * item);
        a.a_stride = C * item;
        if (argv[1][4] == 'q') {
            a.Q = slurp(argv[4], N * C * item);
            a.q_stride = C * item;
        } else {
            a.y = slurp(argv[4], N * sizeof(ptrdiff_t));
        }
        a.w_sum = (double)C;
        a.eps = atof(argv[8]);
        a.scale = 1.0 / N;
        a.ignore_index = -100;
        a.rows_out = malloc(N * C * item);
        a.rows_out_stride = C * item;
        a.per_row_out = malloc(N * sizeof(double));
        a.C = C;
        void* scratch = malloc((C + C / 64 + 2) * item);
        k->cross_entropy[f64](&a, 0, N, scratch);
        spill(argv[5], a.per_row_out, N * sizeof(double), "wb");
        spill(argv[5], a.rows_out, N * C * item, "ab");
        return 0;
    }
    fprintf(stderr, "bad arguments\n");
    return 2;
}
