// Building blocks of the tensor-core decode kernel (mma_decode.cu): PTX wrappers, the unpacking of
// bit-packed codes into fp16 pairs without int-to-float conversions, and cp.async row copies.
// Header-free on purpose: NVRTC compiles it with no CUDA include path.

typedef unsigned int u32;
typedef unsigned short u16;
typedef unsigned long long u64;

#define NEG_INF __int_as_float(0xff800000)

__device__ __forceinline__ u32 prmt(u32 a, u32 b, u32 sel) {
  u32 d; asm("prmt.b32 %0, %1, %2, %3;" : "=r"(d) : "r"(a), "r"(b), "r"(sel)); return d;
}
__device__ __forceinline__ u32 mask_or(u32 a, u32 m, u32 c) {  // (a & m) | c
  u32 d; asm("lop3.b32 %0, %1, %2, %3, 0xea;" : "=r"(d) : "r"(a), "r"(m), "r"(c)); return d;
}
__device__ __forceinline__ u32 mask_xor(u32 a, u32 m, u32 c) {  // (a & m) ^ c
  u32 d; asm("lop3.b32 %0, %1, %2, %3, 0x6a;" : "=r"(d) : "r"(a), "r"(m), "r"(c)); return d;
}
__device__ __forceinline__ u32 hsub2(u32 a, u32 b) {
  u32 d; asm("sub.f16x2 %0, %1, %2;" : "=r"(d) : "r"(a), "r"(b)); return d;
}
__device__ __forceinline__ u32 hmul2(u32 a, u32 b) {
  u32 d; asm("mul.f16x2 %0, %1, %2;" : "=r"(d) : "r"(a), "r"(b)); return d;
}
__device__ __forceinline__ u32 pack_half2(float lo, float hi) {
  u32 d; asm("cvt.rn.f16x2.f32 %0, %1, %2;" : "=r"(d) : "f"(hi), "f"(lo)); return d;
}
__device__ __forceinline__ float half_to_float(u16 h) {
  float f; asm("cvt.f32.f16 %0, %1;" : "=f"(f) : "h"(h)); return f;
}
__device__ __forceinline__ float ex2(float x) {
  float y; asm("ex2.approx.ftz.f32 %0, %1;" : "=f"(y) : "f"(x)); return y;
}
__device__ __forceinline__ float lg2(float x) {
  float y; asm("lg2.approx.ftz.f32 %0, %1;" : "=f"(y) : "f"(x)); return y;
}
// An 8x8 fp16 matrix held as the m8n8 fragment (lane 4r + c: row r, cols 2c, 2c+1), transposed.
__device__ __forceinline__ u32 transpose8x8(u32 x) {
  u32 d; asm("movmatrix.sync.aligned.m8n8.trans.b16 %0, %1;" : "=r"(d) : "r"(x)); return d;
}
// d += a * b: A [16 x 16] row-major fp16 (4 regs), B [16 x 8] col-major fp16 (2 regs), fp32 C/D
__device__ __forceinline__ void mma(float (&d)[4], u32 a0, u32 a1, u32 a2, u32 a3, u32 b0, u32 b1) {
  asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, "
               "{%8,%9}, {%0,%1,%2,%3};"
               : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
               : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "r"(b0), "r"(b1));
}
__device__ __forceinline__ u32 smem_addr(const void* p) { return (u32)__cvta_generic_to_shared(p); }
__device__ __forceinline__ void cp_async16(u32 dst, const void* src, bool valid) {
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;" ::"r"(dst), "l"(src), "r"(valid ? 16 : 0));
}
__device__ __forceinline__ void cp_commit() { asm volatile("cp.async.commit_group;"); }
template <int N_> __device__ __forceinline__ void cp_wait() { asm volatile("cp.async.wait_group %0;" ::"n"(N_)); }

// prmt selector: byte ``k`` of word a into the low byte of the low half, byte ``k`` of word b
// into the low byte of the high half (the halves' high bytes are masked off afterwards).
__device__ __forceinline__ u32 pair_selector(int k) {
  return (u32)(k | (k << 4) | ((4 + k) << 8) | ((4 + k) << 12));
}
// fp16 exponent field that makes bit ``pos`` of a half's mantissa worth 1 (value 2^(10-pos) + code)
#define MAGIC(pos) ((u32)(25 - (pos)) << 10)
// The codes at bit ``lo_pos`` of the low half and ``hi_pos`` of the high half of x, exactly, as
// an fp16 pair: one lop3 masks them into place under the exponents that make their lowest bit
// worth 1, one sub.f16x2 removes those powers of two.
__device__ __forceinline__ u32 codes_at(u32 x, int bits, int lo_pos, int hi_pos) {
  const u32 low = (1u << bits) - 1u;
  const u32 magic = MAGIC(lo_pos) | (MAGIC(hi_pos) << 16);
  return hsub2(mask_or(x, (low << lo_pos) | (low << (16 + hi_pos)), magic), magic);
}
// As codes_at without the subtraction: 2^(10 - lo_pos) + code, 2^(10 - hi_pos) + code (exact).
__device__ __forceinline__ u32 biased_codes_at(u32 x, int bits, int lo_pos, int hi_pos) {
  const u32 low = (1u << bits) - 1u;
  return mask_or(x, (low << lo_pos) | (low << (16 + hi_pos)), MAGIC(lo_pos) | (MAGIC(hi_pos) << 16));
}
// -(2^(10 - lo_pos)), -(2^(10 - hi_pos)) as an fp16 pair: what biased_codes_at adds, negated.
#define NEG_BIAS(lo_pos, hi_pos) (MAGIC(lo_pos) | 0x8000u | ((MAGIC(hi_pos) | 0x8000u) << 16))
// Two signed 8-bit side codes (low bytes of the halves of x) as an exact fp16 pair.
__device__ __forceinline__ u32 int8_pair(u32 x) {
  const u32 bias = 0x64806480u;  // (1152, 1152): b -> 1024 + (b ^ 0x80)
  return hsub2(mask_xor(x, 0x00ff00ffu, bias), bias);
}

// Shared-memory row slot of token j of a chunk: keeps the lanes' code reads free of bank conflicts
// (the four tokens one load instruction reads sit in different 32-byte bank groups).
__device__ __forceinline__ int slot(int j) {
  const int r = j & 7;
  return (j & ~7) | (r < 4 ? r : (r ^ 1));
}

// cp.async of NROWS rows of ROW_BYTES (a multiple or a divisor of 16) from src to dst; rows from
// ``valid`` on are zero-filled (never read); PERMUTE places row j at slot(j).
template <int ROW_BYTES, int NROWS, bool PERMUTE>
__device__ __forceinline__ void copy_rows(unsigned char* dst, const unsigned char* src, int valid, int lane) {
  constexpr int PIECES = ROW_BYTES * NROWS / 16;
#pragma unroll
  for (int p = lane; p < PIECES; p += 32) {
    const int byte = p * 16;
    const int row = byte / ROW_BYTES;
    const bool ok = row < valid;
    const int at = PERMUTE ? slot(row) * ROW_BYTES + (byte - row * ROW_BYTES) : byte;
    cp_async16(smem_addr(dst + at), ok ? (const void*)(src + byte) : (const void*)src, ok);
  }
}
