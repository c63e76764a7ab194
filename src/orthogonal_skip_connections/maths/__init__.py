"""Layer 1, maths: pure tensor maths on O(n) and the decomposition theorem's construction. No nn.Module."""
