// Link-time stand-in for libnvinfer and libnvonnxparser, for building and testing the shim where
// TensorRT's libraries cannot be installed (CI). Every factory returns null, so the shim reports
// VT_ERR_UNAVAILABLE; nothing here pretends to run a model.

#include <cstdint>

extern "C" {

void *createInferBuilder_INTERNAL(void *, int32_t) noexcept { return nullptr; }
void *createInferRuntime_INTERNAL(void *, int32_t) noexcept { return nullptr; }
void *createNvOnnxParser_INTERNAL(void *, void *, int) noexcept { return nullptr; }
int32_t getInferLibVersion() noexcept { return 0; }

} // extern "C"
