# Wrong: pi as 3.14 is off by more than 1e-6.
r = float(input())
print(3.14 * r * r)
