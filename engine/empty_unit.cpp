// An empty translation unit: lets a library target exist before its folder has sources.
