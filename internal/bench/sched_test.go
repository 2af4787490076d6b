package bench

import "testing"

func TestRounds(t *testing.T) {
	const n, rounds = 4, 8
	rs := Rounds(n, rounds)
	if len(rs) != rounds {
		t.Fatalf("%d rounds, want %d", len(rs), rounds)
	}
	first := make([]int, n)
	follows := map[[2]int]int{}
	for _, order := range rs {
		seen := make([]bool, n)
		for i, c := range order {
			if c < 0 || c >= n || seen[c] {
				t.Fatalf("round %v is not a permutation of 0..%d", order, n-1)
			}
			seen[c] = true
			if i > 0 {
				follows[[2]int{order[i-1], c}]++
			}
		}
		first[order[0]]++
	}
	// Every contender leads a round equally often, so none always runs
	// first after the previous round's heavy hitter.
	for c, k := range first {
		if k != rounds/n {
			t.Errorf("contender %d first in %d rounds, want %d", c, k, rounds/n)
		}
	}
	if len(follows) == 0 {
		t.Fatal("no adjacency recorded")
	}
	if Rounds(0, 3) != nil || Rounds(3, 0) != nil {
		t.Error("empty schedule expected")
	}
	if got := Rounds(1, 3); len(got) != 3 || got[2][0] != 0 {
		t.Errorf("single contender: %v", got)
	}
}
