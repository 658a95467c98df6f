# Binary search: at most 30 questions, then the answer. Every line is flushed.
lo, hi = 1, 10**9
while True:
    mid = (lo + hi) // 2
    print("?", mid, flush=True)
    a = input()
    if a == "=":
        print("!", mid, flush=True)
        break
    if a == "<":
        hi = mid - 1
    else:
        lo = mid + 1
