"""Building blocks shared by several plugin families (attack decoders, simulated attackers)."""
