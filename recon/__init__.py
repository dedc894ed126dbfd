"""CardioMM physics core: conventions, operators, sampling masks, coil maps, classical reconstructions, metrics."""
