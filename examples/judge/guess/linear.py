# Asks 1, 2, 3, ... in turn: right, but within 31 lines only for small secrets.
g = 1
while True:
    print("?", g, flush=True)
    if input() == "=":
        print("!", g, flush=True)
        break
    g += 1
