// Out of memory: a table of a + b longs, touched.
#include <iostream>
#include <vector>
int main() {
    long long a, b;
    std::cin >> a >> b;
    std::vector<long long> t(a + b > 100 ? a + b : 100, 1);
    std::cout << a + b + t[0] - 1 << "\n";
}
