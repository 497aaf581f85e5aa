// QuantizeToUint8 is clamp(nearbyint(x / scale) + zero_point, 0, 255) for every value,
// whichever of its loops (16 at a time, the masked tail, the parallel split) reaches it.

#include "server/model/uint8_quantize.h"

#include <torch/torch.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <vector>

#include "gtest/gtest.h"

namespace clipserve {
namespace {

// The definition, one value at a time, on x as fp32 (bf16 widens exactly).
std::vector<uint8_t> Expected(const torch::Tensor& x, float scale, int32_t zero_point) {
  const torch::Tensor f = x.to(torch::kFloat).contiguous();
  std::vector<uint8_t> q(f.numel());
  for (int64_t i = 0; i < f.numel(); ++i) {
    const int32_t r =
        static_cast<int32_t>(std::nearbyint(f.data_ptr<float>()[i] / scale)) + zero_point;
    q[i] = static_cast<uint8_t>(std::clamp(r, 0, 255));
  }
  return q;
}

std::vector<uint8_t> Values(const torch::Tensor& q) {
  EXPECT_EQ(q.scalar_type(), torch::kByte);
  const uint8_t* p = q.data_ptr<uint8_t>();
  return {p, p + q.numel()};
}

// Sizes below, at and past a block of 16, and past the parallel grain (32768 values),
// so both threads run with a partial block at the end of the whole.
TEST(QuantizeToUint8Test, QuantizesEveryValueAsTheDefinitionDoes) {
  torch::manual_seed(3);
  for (torch::ScalarType dtype : {torch::kFloat, torch::kBFloat16}) {
    for (int64_t n : {1, 15, 16, 17, 33, 1000, 70001}) {
      SCOPED_TRACE(testing::Message() << dtype << " n=" << n);
      // Past both ends of [0, 255] once shifted by the zero point: the clamp runs.
      const torch::Tensor x = (torch::randn({n}) * 60).to(dtype);
      const float scale = 0.37f;
      const int32_t zero_point = 97;
      const torch::Tensor q = QuantizeToUint8(x, scale, zero_point);
      EXPECT_EQ(q.sizes(), x.sizes());
      EXPECT_EQ(Values(q), Expected(x, scale, zero_point));
    }
  }
}

// Exact halves round to the even neighbour, as nearbyint does, not away from zero.
TEST(QuantizeToUint8Test, RoundsHalvesToEven) {
  const std::vector<float> halves = {0.25f, 0.75f, 1.25f, -0.25f, -0.75f, 2.25f,
                                     0.25f, 0.75f, 1.25f, -0.25f, -0.75f, 2.25f,
                                     0.25f, 0.75f, 1.25f, -0.25f, -0.75f, 2.25f};
  // x / 0.5 = 0.5, 1.5, 2.5, -0.5, -1.5, 4.5: to even, 0, 2, 2, 0, -2, 4.
  const std::vector<uint8_t> expected = {10, 12, 12, 10, 8,  14, 10, 12, 12,
                                         10, 8,  14, 10, 12, 12, 10, 8,  14};
  for (torch::ScalarType dtype : {torch::kFloat, torch::kBFloat16}) {
    SCOPED_TRACE(dtype);
    const torch::Tensor x = torch::tensor(halves).to(dtype);
    EXPECT_EQ(Values(QuantizeToUint8(x, 0.5f, 10)), expected);
  }
}

TEST(QuantizeToUint8Test, KeepsTheInputsShape) {
  const torch::Tensor x = torch::zeros({2, 3, 5});
  const torch::Tensor q = QuantizeToUint8(x, 1.0f, 128);
  EXPECT_EQ(q.sizes(), x.sizes());
  EXPECT_EQ(Values(q), std::vector<uint8_t>(30, 128));
}

TEST(QuantizeToUint8Test, RefusesOtherDtypesAndStridedInputs) {
  EXPECT_THROW(QuantizeToUint8(torch::zeros({4}, torch::kDouble), 1.0f, 0), c10::Error);
  EXPECT_THROW(QuantizeToUint8(torch::zeros({4, 4}).t(), 1.0f, 0), c10::Error);
}

}  // namespace
}  // namespace clipserve
