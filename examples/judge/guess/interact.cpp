// An interactor in testlib's convention: `interact INPUT OUTPUT` (INPUT: this case's test, a
// secret number in 1..10^9). The program's stdout is this program's stdin and the other way
// round: it asks `? g` and is told `<` (the secret is smaller), `>` (larger) or `=`, then
// answers `! x`; at most 31 lines. Exit 0 accepted, 1 wrong answer, 2 presentation error,
// 3 the interactor failed; the verdict's words on stderr (testlib's `quitf` does the same).
#include <cstdio>
#include <cstring>
int main(int argc, char **argv) {
    if (argc < 3) { std::fprintf(stderr, "usage: interact INPUT OUTPUT [ANSWER]\n"); return 3; }
    std::FILE *in = std::fopen(argv[1], "r"), *out = std::fopen(argv[2], "w");
    long long secret;
    if (!in || !out || std::fscanf(in, "%lld", &secret) != 1) { std::fprintf(stderr, "bad test\n"); return 3; }
    char op[8];
    long long g;
    for (int q = 1; q <= 31; q++) {
        if (std::scanf("%7s %lld", op, &g) != 2) { std::fprintf(stderr, "the program stopped after %d lines\n", q - 1); return 1; }
        if (std::strcmp(op, "!") == 0) {
            if (g != secret) { std::fprintf(stderr, "answered %lld, the secret was %lld\n", g, secret); return 1; }
            std::fprintf(out, "%d\n", q);
            std::fprintf(stderr, "found %lld with %d lines\n", secret, q);
            return 0;
        }
        if (std::strcmp(op, "?") != 0) { std::fprintf(stderr, "expected `?` or `!`, got `%s`\n", op); return 2; }
        std::printf("%s\n", secret < g ? "<" : secret > g ? ">" : "=");
        std::fflush(stdout);
    }
    std::fprintf(stderr, "more than 31 lines\n");
    return 1;
}
