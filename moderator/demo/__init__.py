"""The demo world: procedural coloured shapes, and how well a model tells them apart."""
