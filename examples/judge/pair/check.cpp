// A checker in testlib's convention: `check INPUT OUTPUT ANSWER` (the three as files);
// exit 0 accepted, 1 wrong answer, 2 presentation error, 3 the checker failed; the verdict's
// words on stderr. (testlib's own checkers, e.g. wcmp or rcmp6 built with testlib.h,
// follow the same convention and run unmodified.)
#include <cstdio>
int main(int argc, char **argv) {
    if (argc < 4) { std::fprintf(stderr, "usage: check INPUT OUTPUT ANSWER\n"); return 3; }
    std::FILE *in = std::fopen(argv[1], "r"), *out = std::fopen(argv[2], "r");
    long long n, a, b;
    if (!in || !out || std::fscanf(in, "%lld", &n) != 1) { std::fprintf(stderr, "bad input\n"); return 3; }
    if (std::fscanf(out, "%lld %lld", &a, &b) != 2) { std::fprintf(stderr, "expected two integers\n"); return 2; }
    if (a < 1 || b < 1 || a + b != n) { std::fprintf(stderr, "%lld + %lld is not %lld (both must be positive)\n", a, b, n); return 1; }
    std::fprintf(stderr, "ok %lld = %lld + %lld\n", n, a, b);
    return 0;
}
