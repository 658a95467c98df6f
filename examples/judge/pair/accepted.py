# Any two positive integers adding up to n: the checker accepts every right answer.
n = int(input())
print(n // 2, n - n // 2)
