// The shared part of the tensor-core decode kernel (mma.sync m16n8k16, sm_80+): the stage layout
// of the packed cache in shared memory, the kernel's Params, PTX helpers, code unpacking and the
// cp.async pipeline one warp streams its split through. mma_decode.cu and mma_kernel.cu follow it.
//
// Compile-time configuration (prepended as #defines by mma_decode.py): KB, VB (key / value bits,
// 2 or 4), GK (key group, tokens), GV (value group, channels), RANK (side-code rank, 0 = none),
// GQ (query heads per KV head, 1..16), SOFTCAP, ROW_START, RES_BF16 (q / residual are bf16, else
// fp16), NW (warps per block), NSTAGE (pipeline depth), MINB (blocks per SM the registers allow).

typedef unsigned int u32;
typedef unsigned short u16;
typedef unsigned long long u64;

#define D 128
#define NEG_INF __int_as_float(0xff800000)
#define CHUNK 64
#define KROW (D * KB / 8)                    // bytes of one token's key codes
#define VROW (D * VB / 8)
#define NGV (D / GV)                         // value groups per token
#define NGC ((CHUNK / GK) > 0 ? (CHUNK / GK) : 1)  // key groups per chunk
#define OFF_KC 0
#define OFF_VC (OFF_KC + CHUNK * KROW)
#define OFF_KS (OFF_VC + CHUNK * VROW)
#define OFF_KZ (OFF_KS + NGC * D * 2)
#define OFF_VS (OFF_KZ + NGC * D * 2)
#define OFF_VZ (OFF_VS + CHUNK * NGV * 2)
#define OFF_SC (OFF_VZ + CHUNK * NGV * 2)
#define OFF_SS (OFF_SC + ((CHUNK * RANK + 15) / 16 * 16))
#define STAGE_BYTES (OFF_SS + (RANK > 0 ? CHUNK * 2 : 0))

struct Params {
  const unsigned char* kc; const u16* ks; const u16* kz;   // [BH][N][KROW], [BH][N/GK][D] fp16
  const unsigned char* vc; const u16* vs; const u16* vz;   // [BH][N][VROW], [BH][N][NGV] fp16
  const unsigned char* sc; const u16* ss;                  // side int8 [BH][N][RANK], scale fp16 [BH][N]
  const float* u;                                          // basis [Hkv][D][RANK]
  const u16* q;                                            // [B*Hq][D]
  const u16* kr; const u16* vr;                            // residual [BH][R][D] (rows of D)
  float* o_part; float* lse; u16* out;                     // [B*Hq][S][D], [B*Hq][S], [B*Hq][D]
  const int* row_start;                                    // [B] or null
  long long s_kc, s_ks, s_vc, s_vs, s_sc, s_ss, s_kr, s_vr;  // (b, h) strides in elements
  int H, N, R, tps, n_qsplits, S, first;
  float qk_scale, sign, cap2;
};

// ---- PTX helpers ---------------------------------------------------------------------------
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
__device__ __forceinline__ float in_to_float(u16 x) {  // one q / residual element
#if RES_BF16
  return __uint_as_float(((u32)x) << 16);
#else
  return half_to_float(x);
#endif
}
__device__ __forceinline__ u32 in_pair_to_half2(u32 w) {  // two q / residual elements -> f16x2
#if RES_BF16
  return pack_half2(__uint_as_float(w << 16), __uint_as_float(w & 0xffff0000u));
#else
  return w;
#endif
}
__device__ __forceinline__ void cp_async16(u32 dst, const void* src, bool valid) {
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;" ::"r"(dst), "l"(src),
               "r"(valid ? 16 : 0));
}
__device__ __forceinline__ void cp_commit() { asm volatile("cp.async.commit_group;"); }
template <int N_> __device__ __forceinline__ void cp_wait() {
  asm volatile("cp.async.wait_group %0;" ::"n"(N_));
}

// fp16 exponent field that makes bit ``pos`` of a half's mantissa worth 1 (value 2^(10 - pos) + code)
#define MAGIC(pos) ((u32)(25 - (pos)) << 10)
// Codes at bit ``lo_pos`` of the low half and ``hi_pos`` of the high half of x, exactly, as f16x2.
__device__ __forceinline__ u32 codes_at(u32 x, int bits, int lo_pos, int hi_pos) {
  u32 low = (1u << bits) - 1u;
  u32 magic = MAGIC(lo_pos) | (MAGIC(hi_pos) << 16);
  return hsub2(mask_or(x, (low << lo_pos) | (low << (16 + hi_pos)), magic), magic);
}

// Smem row slot of token j of a chunk: keeps the lanes' code reads free of bank conflicts.
__device__ __forceinline__ int slot(int j) {
  int r = j & 7;
  return (j & ~7) | (r < 4 ? r : (r ^ 1));
}

__device__ __forceinline__ u32 smem_addr(const void* p) {
  return (u32)__cvta_generic_to_shared(p);
}

// cp.async of ``rows`` rows of ``row_bytes`` (a multiple of 16, or a divisor of 16) from src into
// dst; rows from ``valid`` on are zero-filled; ``permute`` places row j at slot(j).
template <int ROW_BYTES, int NROWS, bool PERMUTE>
__device__ __forceinline__ void copy_rows(unsigned char* dst, const unsigned char* src, int valid,
                                          int lane) {
  constexpr int TOTAL = ROW_BYTES * NROWS;
  constexpr int PIECES = TOTAL / 16;
  for (int p = lane; p < PIECES; p += 32) {
    int byte = p * 16;
    int row = byte / ROW_BYTES;
    bool ok = row < valid;
    int dst_byte = byte;
    if (PERMUTE) dst_byte = slot(row) * ROW_BYTES + (byte - row * ROW_BYTES);
    cp_async16(smem_addr(dst + dst_byte), ok ? (const void*)(src + byte) : (const void*)src, ok);
  }
}

struct Rows {  // the (b, h) row of every input
  const unsigned char *kc, *vc, *sc;
  const u16 *ks, *kz, *vs, *vz, *ss;
};

__device__ __forceinline__ void load_chunk(unsigned char* st, const Rows& r, int c0, int hi, int lane) {
  int valid = hi - c0;
  copy_rows<KROW, CHUNK, true>(st + OFF_KC, r.kc + (long long)c0 * KROW, valid, lane);
  copy_rows<VROW, CHUNK, true>(st + OFF_VC, r.vc + (long long)c0 * VROW, valid, lane);
  int g0 = c0 / GK;
  int gvalid = (hi + GK - 1) / GK - g0;
  copy_rows<D * 2, NGC, false>(st + OFF_KS, (const unsigned char*)(r.ks + (long long)g0 * D), gvalid, lane);
  copy_rows<D * 2, NGC, false>(st + OFF_KZ, (const unsigned char*)(r.kz + (long long)g0 * D), gvalid, lane);
  copy_rows<NGV * 2, CHUNK, false>(st + OFF_VS, (const unsigned char*)(r.vs + (long long)c0 * NGV), valid, lane);
  copy_rows<NGV * 2, CHUNK, false>(st + OFF_VZ, (const unsigned char*)(r.vz + (long long)c0 * NGV), valid, lane);
#if RANK > 0
  copy_rows<RANK, CHUNK, false>(st + OFF_SC, r.sc + (long long)c0 * RANK, valid, lane);
  copy_rows<2, CHUNK, false>(st + OFF_SS, (const unsigned char*)(r.ss + c0), valid, lane);
#endif
}

// Streams the quantized tokens of this warp's split (from the first visible chunk) through its
// NSTAGE-deep cp.async ring at ``ring`` and calls on_chunk(stage, c0, hi) for each CHUNK-token
// stage once it has landed.
template <class OnChunk>
__device__ __forceinline__ void stream_chunks(const Params& p, int bh, int split, int vis, unsigned char* ring,
                                              int lane, OnChunk&& on_chunk) {
  Rows r;
  r.kc = p.kc + bh * p.s_kc; r.vc = p.vc + bh * p.s_vc; r.sc = p.sc + bh * p.s_sc;
  r.ks = p.ks + bh * p.s_ks; r.kz = p.kz + bh * p.s_ks;
  r.vs = p.vs + bh * p.s_vs; r.vz = p.vz + bh * p.s_vs; r.ss = p.ss + bh * p.s_ss;
  const int lo = split * p.tps, hi = min(p.N, lo + p.tps);
  const int c_first = max(lo, (vis / CHUNK) * CHUNK);
  const int nchunks = hi > c_first ? (hi - c_first + CHUNK - 1) / CHUNK : 0;
#pragma unroll
  for (int s0 = 0; s0 < NSTAGE - 1; ++s0) {
    if (s0 < nchunks) load_chunk(ring + s0 * STAGE_BYTES, r, c_first + s0 * CHUNK, hi, lane);
    cp_commit();
  }
  for (int c = 0; c < nchunks; ++c) {
    const int cn = c + NSTAGE - 1;
    if (cn < nchunks) load_chunk(ring + (cn % NSTAGE) * STAGE_BYTES, r, c_first + cn * CHUNK, hi, lane);
    cp_commit();
    cp_wait<NSTAGE - 1>();
    __syncwarp();
    on_chunk((const unsigned char*)(ring + (c % NSTAGE) * STAGE_BYTES), c_first + c * CHUNK, hi);
    __syncwarp();
  }
}
