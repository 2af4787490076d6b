package bench

// Rounds returns, for each of rounds rounds, the order in which n
// contenders run. Every contender runs once per round; the starting
// position rotates, so no contender always follows the same neighbour or
// always runs first (right after a GC or a pool refill of another). Noise
// that lasts longer than a slice hits every contender alike.
func Rounds(n, rounds int) [][]int {
	if n <= 0 || rounds <= 0 {
		return nil
	}
	out := make([][]int, rounds)
	for r := range out {
		order := make([]int, n)
		for i := range order {
			order[i] = (i + r) % n
		}
		out[r] = order
	}
	return out
}
