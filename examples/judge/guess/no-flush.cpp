// The binary search without flushing: stdout is a pipe, not a terminal, so the question
// waits in the C library's buffer; the interactor waits for it, and the program for the
// reply, until the timeout ends them. (std::endl or fflush(stdout) after each line fixes it.)
#include <cstdio>
#include <cstring>
int main() {
    long long lo = 1, hi = 1000000000;
    char a[4];
    while (true) {
        long long mid = (lo + hi) / 2;
        std::printf("? %lld\n", mid);
        if (std::scanf("%3s", a) != 1) return 1;
        if (std::strcmp(a, "=") == 0) { std::printf("! %lld\n", mid); return 0; }
        if (std::strcmp(a, "<") == 0) hi = mid - 1; else lo = mid + 1;
    }
}
