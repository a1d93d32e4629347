#pragma once  // see tests/cpp/gloo_decls/README.md: declarations only
