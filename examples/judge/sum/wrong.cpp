// Wrong on one case: forgets the sign (03 adds a negative number).
#include <cstdlib>
#include <iostream>
int main() {
    long long a, b;
    std::cin >> a >> b;
    std::cout << std::llabs(a + b) << "\n";
}
