#ifndef CLIPSERVE_SERVER_MODEL_LINEAR_ACTIVATION_H_
#define CLIPSERVE_SERVER_MODEL_LINEAR_ACTIVATION_H_

namespace clipserve {

// The activation a packed product (Int8Linear, Bf16Linear) applies to its fp32 sums,
// bias added, in the same pass, before they are rounded to the output's dtype.
enum class LinearActivation {
  kNone,
  kQuickGelu,  // h * sigmoid(1.702 h), OpenAI CLIP's
  kGelu,       // exact (erf) GELU
};

}  // namespace clipserve

#endif  // CLIPSERVE_SERVER_MODEL_LINEAR_ACTIVATION_H_
