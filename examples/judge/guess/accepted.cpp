// Binary search: at most 30 questions, then the answer. Every line is flushed.
#include <iostream>
#include <string>
int main() {
    long long lo = 1, hi = 1000000000;
    while (true) {
        long long mid = (lo + hi) / 2;
        std::cout << "? " << mid << std::endl;  // std::endl flushes
        std::string a;
        if (!(std::cin >> a)) return 1;
        if (a == "=") { std::cout << "! " << mid << std::endl; return 0; }
        if (a == "<") hi = mid - 1; else lo = mid + 1;
    }
}
