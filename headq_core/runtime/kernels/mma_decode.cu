// Split-K decode attention over the packed cache on tensor cores (mma.sync m16n8k16, sm_80+).
//
// One warp is one split of one (batch row, KV head): it streams its tokens in CHUNK-token chunks
// through an NSTAGE-deep cp.async pipeline in shared memory (only the packed bytes travel) and
// unpacks every code straight into the register fragment the tensor cores read:
//   keys    logits[h, j] = sum_c (q_c s_gc) code_jc + sum_c q_c z_gc  (key scale folded into the
//           query once per key group g; the zero-point term is one more mma per chunk)
//   values  v_jc = code_jc s_jG + z_jG, dequantized in fp16 pairs of neighbouring tokens
//   side    + sign <U^T q, c_j> s_j as one more k-step of the key mma (HeadQ correction)
// The query heads of a KV head are the mma's M rows (padded to 16). Channel and token orders
// inside a fragment are chosen so that each lane reads whole bytes of codes and adjacent
// scale/zero pairs; they never reach memory. Logits are in base 2; a split writes its normalised
// output and log-sum-exp (merged by a second launch) or, alone, the output itself.
//
// Compile-time configuration (prepended as #defines by mma_decode.py): KB, VB (key / value bits,
// 2 or 4), GK (key group, tokens), GV (value group, channels), RANK (side-code rank, 0 = none),
// GQ (query heads per KV head, 1..16), SOFTCAP, ROW_START, RES_BF16 (q / residual are bf16, else
// fp16), NW (warps per block), NSTAGE (pipeline depth).

typedef unsigned int u32;
typedef unsigned short u16;
typedef unsigned long long u64;

#define D 128
#define NEG_INF __int_as_float(0xff800000)
#define CHUNK 64
#define ROWS ((GQ > 8) ? 2 : 1)              // fragment rows g and g + 8 of the 16 mma rows
#define KROW (D * KB / 8)                    // bytes of one token's key codes
#define VROW (D * VB / 8)
#define NGV (D / GV)                         // value groups per token
#define NGC ((CHUNK / GK) > 0 ? (CHUNK / GK) : 1)  // key groups per chunk
#define RANKP ((RANK + 15) / 16 * 16)
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
__device__ __forceinline__ u32 hfma2(u32 a, u32 b, u32 c) {
  u32 d; asm("fma.rn.f16x2 %0, %1, %2, %3;" : "=r"(d) : "r"(a), "r"(b), "r"(c)); return d;
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
// d += a * b: A [16 x 16] row-major fp16 (4 regs), B [16 x 8] col-major fp16 (2 regs), fp32 D/C
__device__ __forceinline__ void mma(float (&d)[4], const u32 (&a)[4], u32 b0, u32 b1) {
  asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, "
               "{%8,%9}, {%0,%1,%2,%3};"
               : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
               : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}
__device__ __forceinline__ void cp_async16(u32 dst, const void* src, bool valid) {
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;" ::"r"(dst), "l"(src),
               "r"(valid ? 16 : 0));
}
__device__ __forceinline__ void cp_commit() { asm volatile("cp.async.commit_group;"); }
template <int N_> __device__ __forceinline__ void cp_wait() {
  asm volatile("cp.async.wait_group %0;" ::"n"(N_));
}

// Byte ``k`` of word w in the low byte of both fp16 halves of the result (bytes 1, 3 are zero).
__device__ __forceinline__ u32 byte_to_halves(u32 w, int k) {
  return prmt(w, 0u, (u32)(k | (4 << 4) | (k << 8) | (4 << 12)));
}
// Byte ``k`` of word a in the low half, byte ``k`` of word b in the high half.
__device__ __forceinline__ u32 bytes_to_halves(u32 a, u32 b, int k) {
  return prmt(a, b, (u32)(k | (k << 4) | ((4 + k) << 8) | ((4 + k) << 12)));
}
// fp16 exponent field that makes bit ``pos`` of a half's mantissa worth 1 (value 2^(10 - pos) + code)
#define MAGIC(pos) ((u32)(25 - (pos)) << 10)
// Codes at bit ``lo_pos`` of the low half and ``hi_pos`` of the high half of x, exactly, as f16x2.
__device__ __forceinline__ u32 codes_at(u32 x, int bits, int lo_pos, int hi_pos) {
  u32 low = (1u << bits) - 1u;
  u32 magic = MAGIC(lo_pos) | (MAGIC(hi_pos) << 16);
  return hsub2(mask_or(x, (low << lo_pos) | (low << (16 + hi_pos)), magic), magic);
}
// Key pair (b0, b1) of k-step kk from the lane's key code words (channels 32t + 4kk .. + 3)
__device__ __forceinline__ void key_pair(const u32* w, int kk, u32& b0, u32& b1) {
#if KB == 2
  u32 x = byte_to_halves(w[kk >> 2], kk & 3);
  b0 = codes_at(x, 2, 0, 2);
  b1 = codes_at(x, 2, 4, 6);
#else
  u32 x0 = byte_to_halves(w[kk >> 1], (2 * kk) & 3);
  u32 x1 = byte_to_halves(w[kk >> 1], (2 * kk + 1) & 3);
  b0 = codes_at(x0, 4, 0, 4);
  b1 = codes_at(x1, 4, 0, 4);
#endif
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

// ---- the online softmax state of one lane ----------------------------------------------------
struct State {
  float m[ROWS];         // running max of rows g (and g + 8), shared by the 4 lanes of a quad
  float l[ROWS];         // this lane's partial sum of exp2
  float o[16][2 * ROWS]; // output fragment: tile j, (row g: cols 2t, 2t+1 [, row g+8: ...])
};

// Logits s[i][...] of the CHUNK tokens from c0 -> probabilities (fp16 A fragments pa[4][4]),
// masked outside [vis, hi), with the running max / sum / output rescaled.
__device__ __forceinline__ void softmax_chunk(float (&s)[8][4], State& st, int c0, int vis, int hi,
                                              int t, float cap2, u32 (&pa)[4][4]) {
  float cmax[ROWS];
  for (int r = 0; r < ROWS; ++r) cmax[r] = NEG_INF;
#pragma unroll
  for (int i = 0; i < 8; ++i) {
#pragma unroll
    for (int e = 0; e < 2 * ROWS; ++e) {
      int tok = c0 + 8 * i + 2 * t + (e & 1);
      float x = s[i][e];
#if SOFTCAP
      float y = x / cap2;
      float em = ex2(-2.8853900817779268f * fabsf(y));
      float th = (1.0f - em) / (1.0f + em);
      x = cap2 * (y < 0.0f ? -th : th);
#endif
      x = (tok >= vis && tok < hi) ? x : NEG_INF;
      s[i][e] = x;
      cmax[e >> 1] = fmaxf(cmax[e >> 1], x);
    }
  }
#pragma unroll
  for (int r = 0; r < ROWS; ++r) {
    cmax[r] = fmaxf(cmax[r], __shfl_xor_sync(0xffffffffu, cmax[r], 1));
    cmax[r] = fmaxf(cmax[r], __shfl_xor_sync(0xffffffffu, cmax[r], 2));
    float m_new = fmaxf(st.m[r], cmax[r]);
    float m_safe = m_new == NEG_INF ? 0.0f : m_new;
    float alpha = ex2(st.m[r] - m_safe);
    st.m[r] = m_new;
    st.l[r] *= alpha;
#pragma unroll
    for (int j = 0; j < 16; ++j) {
      st.o[j][2 * r] *= alpha;
      st.o[j][2 * r + 1] *= alpha;
    }
    cmax[r] = m_safe;
  }
#pragma unroll
  for (int i = 0; i < 8; ++i) {
    float p[4];
#pragma unroll
    for (int e = 0; e < 2 * ROWS; ++e) {
      p[e] = ex2(s[i][e] - cmax[e >> 1]);
      st.l[e >> 1] += p[e];
    }
    // tile i gives k-columns 0..7 (i even) or 8..15 (i odd) of k-step i / 2
    pa[i >> 1][(i & 1) * 2] = pack_half2(p[0], p[1]);
    pa[i >> 1][(i & 1) * 2 + 1] = ROWS == 2 ? pack_half2(p[2 % (2 * ROWS)], p[3 % (2 * ROWS)]) : 0u;
  }
}

// o += P V for the CHUNK tokens of a stage: P as A fragments pa[4], V unpacked into B fragments.
__device__ __forceinline__ void pv_quantized(State& st, const u32 (&pa)[4][4], const unsigned char* stg,
                                             int g, int t) {
  const int grp = (16 * g) / GV;
#pragma unroll
  for (int k = 0; k < 4; ++k) {
    // tokens of b0: 16k + 2t, 16k + 2t + 1; of b1: those + 8 (chunk order; rows at their slots)
    int ta = 16 * k + 2 * t;
    int toks[4] = {ta, ta + 1, ta + 8, ta + 9};
    u32 sc[2], zr[2];
    const u16* vs = (const u16*)(stg + OFF_VS);
    const u16* vz = (const u16*)(stg + OFF_VZ);
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      sc[h] = (u32)vs[toks[2 * h] * NGV + grp] | ((u32)vs[toks[2 * h + 1] * NGV + grp] << 16);
      zr[h] = (u32)vz[toks[2 * h] * NGV + grp] | ((u32)vz[toks[2 * h + 1] * NGV + grp] << 16);
    }
#if VB == 2
    u32 w[4];
#pragma unroll
    for (int e = 0; e < 4; ++e) w[e] = *(const u32*)(stg + OFF_VC + slot(toks[e]) * VROW + 4 * g);
#pragma unroll
    for (int byte = 0; byte < 4; ++byte) {
      u32 x0 = bytes_to_halves(w[0], w[1], byte);
      u32 x1 = bytes_to_halves(w[2], w[3], byte);
#pragma unroll
      for (int pos = 0; pos < 4; ++pos) {
        int j = 4 * byte + pos;  // channel 16g + j
        u32 b0 = hfma2(codes_at(x0, 2, 2 * pos, 2 * pos), sc[0], zr[0]);
        u32 b1 = hfma2(codes_at(x1, 2, 2 * pos, 2 * pos), sc[1], zr[1]);
        float acc[4] = {st.o[j][0], st.o[j][1], ROWS == 2 ? st.o[j][2 % (2 * ROWS)] : 0.0f,
                        ROWS == 2 ? st.o[j][3 % (2 * ROWS)] : 0.0f};
        mma(acc, pa[k], b0, b1);
        st.o[j][0] = acc[0]; st.o[j][1] = acc[1];
        if (ROWS == 2) { st.o[j][2 % (2 * ROWS)] = acc[2]; st.o[j][3 % (2 * ROWS)] = acc[3]; }
      }
    }
#else
    u64 w[4];
#pragma unroll
    for (int e = 0; e < 4; ++e) w[e] = *(const u64*)(stg + OFF_VC + slot(toks[e]) * VROW + 8 * g);
#pragma unroll
    for (int byte = 0; byte < 8; ++byte) {
      int sh = (byte >> 2) * 32;
      u32 x0 = bytes_to_halves((u32)(w[0] >> sh), (u32)(w[1] >> sh), byte & 3);
      u32 x1 = bytes_to_halves((u32)(w[2] >> sh), (u32)(w[3] >> sh), byte & 3);
#pragma unroll
      for (int pos = 0; pos < 2; ++pos) {
        int j = 2 * byte + pos;
        u32 b0 = hfma2(codes_at(x0, 4, 4 * pos, 4 * pos), sc[0], zr[0]);
        u32 b1 = hfma2(codes_at(x1, 4, 4 * pos, 4 * pos), sc[1], zr[1]);
        float acc[4] = {st.o[j][0], st.o[j][1], ROWS == 2 ? st.o[j][2 % (2 * ROWS)] : 0.0f,
                        ROWS == 2 ? st.o[j][3 % (2 * ROWS)] : 0.0f};
        mma(acc, pa[k], b0, b1);
        st.o[j][0] = acc[0]; st.o[j][1] = acc[1];
        if (ROWS == 2) { st.o[j][2 % (2 * ROWS)] = acc[2]; st.o[j][3 % (2 * ROWS)] = acc[3]; }
      }
    }
#endif
  }
}

// Logits of the CHUNK quantized tokens of a stage into s[8][4] (base 2, before the mask).
__device__ __forceinline__ void qk_quantized(float (&s)[8][4], const u32 (&qh)[8][4], const u32 (&qu)[4],
                                             const unsigned char* stg, int g, int t, int lane) {
  // zero-point term per key group of the chunk: bias[row][grp] = sum_c qh[row, c] z[grp, c]
  float bias[4] = {0.f, 0.f, 0.f, 0.f};
  {
    const u32* zrow = (const u32*)(stg + OFF_KZ + ((g < NGC) ? g : 0) * D * 2) + 16 * t;
#pragma unroll
    for (int kk = 0; kk < 8; ++kk) mma(bias, qh[kk], zrow[2 * kk], zrow[2 * kk + 1]);
  }
  u32 qs[8][4];
#pragma unroll
  for (int i = 0; i < 8; ++i) {
    constexpr int TILES_PER_GROUP = (GK / 8) < 8 ? (GK / 8) : 8;
    const int grp = i / TILES_PER_GROUP;
    if (i % TILES_PER_GROUP == 0) {  // fold this group's key scales into the query
      const u32* srow = (const u32*)(stg + OFF_KS + grp * D * 2) + 16 * t;
#pragma unroll
      for (int kk = 0; kk < 8; ++kk) {
        qs[kk][0] = hmul2(qh[kk][0], srow[2 * kk]);
        qs[kk][1] = ROWS == 2 ? hmul2(qh[kk][1], srow[2 * kk]) : 0u;
        qs[kk][2] = hmul2(qh[kk][2], srow[2 * kk + 1]);
        qs[kk][3] = ROWS == 2 ? hmul2(qh[kk][3], srow[2 * kk + 1]) : 0u;
      }
    }
    const int src = (lane & ~3) | (grp >> 1);
    float b_lo = __shfl_sync(0xffffffffu, bias[grp & 1], src);
    float b_hi = ROWS == 2 ? __shfl_sync(0xffffffffu, bias[2 + (grp & 1)], src) : 0.0f;
    float acc[4] = {b_lo, b_lo, b_hi, b_hi};
    const int tok = 8 * i + g;
    const u32* kw = (const u32*)(stg + OFF_KC + slot(tok) * KROW + (KROW / 4) * t);
    u32 w[KB == 2 ? 2 : 4];
#pragma unroll
    for (int e = 0; e < (KB == 2 ? 2 : 4); ++e) w[e] = kw[e];
#pragma unroll
    for (int kk = 0; kk < 8; ++kk) {
      u32 b0, b1;
      key_pair(w, kk, b0, b1);
      mma(acc, qs[kk], b0, b1);
    }
#if RANK > 0
    {
      const unsigned char* crow = stg + OFF_SC + tok * RANK;
      u32 sscale = (u32)((const u16*)(stg + OFF_SS))[tok];
      sscale |= sscale << 16;
      u32 b0 = 0u, b1 = 0u;
      const u32 bias8 = 0x64806480u;  // fp16 (1152, 1152): int8 b -> 1024 + (b ^ 0x80)
      if (2 * t < RANK) {
        u32 x = (u32)crow[2 * t] | ((u32)crow[2 * t + 1] << 16);
        b0 = hmul2(hsub2(mask_xor(x, 0x00ff00ffu, bias8), bias8), sscale);
      }
      if (RANK > 8 && 2 * t + 8 < RANK) {
        u32 x = (u32)crow[2 * t + 8] | ((u32)crow[2 * t + 9] << 16);
        b1 = hmul2(hsub2(mask_xor(x, 0x00ff00ffu, bias8), bias8), sscale);
      }
      mma(acc, qu, b0, b1);
    }
#endif
#pragma unroll
    for (int e = 0; e < 4; ++e) s[i][e] = acc[e];
  }
}

// Residual (full-precision) tokens [c0, hi) of row kr / vr: logits and P V straight from global memory.
__device__ __forceinline__ void residual_chunk(State& st, const u32 (&qh)[8][4], const u16* kr,
                                               const u16* vr, int c0, int hi, int vis, int g, int t,
                                               float cap2) {
  float s[8][4];
#pragma unroll
  for (int i = 0; i < 8; ++i) {
    int tok = c0 + 8 * i + g;
    u32 w[16];
    const uint4* src = (const uint4*)(kr + (long long)tok * D + 32 * t);
#pragma unroll
    for (int e = 0; e < 4; ++e) {
      uint4 v = tok < hi ? src[e] : make_uint4(0u, 0u, 0u, 0u);
      w[4 * e] = v.x; w[4 * e + 1] = v.y; w[4 * e + 2] = v.z; w[4 * e + 3] = v.w;
    }
    float acc[4] = {0.f, 0.f, 0.f, 0.f};
#pragma unroll
    for (int kk = 0; kk < 8; ++kk) mma(acc, qh[kk], in_pair_to_half2(w[2 * kk]), in_pair_to_half2(w[2 * kk + 1]));
#pragma unroll
    for (int e = 0; e < 4; ++e) s[i][e] = acc[e];
  }
  u32 pa[4][4];
  softmax_chunk(s, st, c0, vis, hi, t, cap2, pa);
#pragma unroll
  for (int k = 0; k < 4; ++k) {
    int ta = c0 + 16 * k + 2 * t;
    int toks[4] = {ta, ta + 1, ta + 8, ta + 9};
    u32 w[4][8];
#pragma unroll
    for (int e = 0; e < 4; ++e) {
      const uint4* src = (const uint4*)(vr + (long long)toks[e] * D + 16 * g);
#pragma unroll
      for (int f = 0; f < 2; ++f) {
        uint4 v = toks[e] < hi ? src[f] : make_uint4(0u, 0u, 0u, 0u);
        w[e][4 * f] = in_pair_to_half2(v.x); w[e][4 * f + 1] = in_pair_to_half2(v.y);
        w[e][4 * f + 2] = in_pair_to_half2(v.z); w[e][4 * f + 3] = in_pair_to_half2(v.w);
      }
    }
#pragma unroll
    for (int j = 0; j < 16; ++j) {  // channel 16g + j: half j % 2 of word j / 2
      u32 sel = (j & 1) ? 0x7632u : 0x5410u;
      u32 b0 = prmt(w[0][j >> 1], w[1][j >> 1], sel);
      u32 b1 = prmt(w[2][j >> 1], w[3][j >> 1], sel);
      float acc[4] = {st.o[j][0], st.o[j][1], ROWS == 2 ? st.o[j][2 % (2 * ROWS)] : 0.0f,
                      ROWS == 2 ? st.o[j][3 % (2 * ROWS)] : 0.0f};
      mma(acc, pa[k], b0, b1);
      st.o[j][0] = acc[0]; st.o[j][1] = acc[1];
      if (ROWS == 2) { st.o[j][2 % (2 * ROWS)] = acc[2]; st.o[j][3 % (2 * ROWS)] = acc[3]; }
    }
  }
}

extern "C" __global__ void __launch_bounds__(NW * 32, MINB)
headq_decode_mma(const Params p) {
  extern __shared__ __align__(16) unsigned char smem[];
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const int g = lane >> 2, t = lane & 3;
  const int split = blockIdx.x * NW + warp;
  if (split >= p.S) return;
  const int bh = blockIdx.y;
  const int b = bh / p.H, h = bh % p.H;
  int vis = p.first;
#if ROW_START
  vis = max(vis, p.row_start[b]);
#endif
  // query fragments (rows = query heads of this KV head), channels 32t + 4kk .. + 3, times qk_scale
  u32 qh[8][4];
  {
    const long long qrow0 = (long long)bh * GQ;
#pragma unroll
    for (int r = 0; r < 2; ++r) {
      int head = g + 8 * r;
      const u32* src = (const u32*)(p.q + (qrow0 + (head < GQ ? head : 0)) * D + 32 * t);
#pragma unroll
      for (int kk = 0; kk < 8; ++kk) {
#pragma unroll
        for (int e = 0; e < 2; ++e) {
          u32 w = src[2 * kk + e];
          float lo = in_to_float((u16)(w & 0xffffu)) * p.qk_scale;
          float hi = in_to_float((u16)(w >> 16)) * p.qk_scale;
          u32 v = head < GQ ? pack_half2(lo, hi) : 0u;
          if (r == 0) qh[kk][2 * e] = v;
          else qh[kk][2 * e + 1] = v;
        }
      }
    }
  }
  State st;
#pragma unroll
  for (int r = 0; r < ROWS; ++r) { st.m[r] = NEG_INF; st.l[r] = 0.f; }
#pragma unroll
  for (int j = 0; j < 16; ++j)
#pragma unroll
    for (int e = 0; e < 2 * ROWS; ++e) st.o[j][e] = 0.f;

  if (split < p.n_qsplits) {
    u32 qu[4] = {0u, 0u, 0u, 0u};
#if RANK > 0
    {  // qu = sign * qh U: C fragment [row g (g+8)][rank 2t, 2t+1] is the side mma's A fragment
#pragma unroll
      for (int half = 0; half < RANKP / 8; ++half) {
        float acc[4] = {0.f, 0.f, 0.f, 0.f};
        const int rk = 8 * half + g;
        const float* urow = p.u + (long long)h * D * RANK + (rk < RANK ? rk : 0);
#pragma unroll
        for (int kk = 0; kk < 8; ++kk) {
          int c = 32 * t + 4 * kk;
          float u0 = urow[(c + 0) * RANK], u1 = urow[(c + 1) * RANK];
          float u2 = urow[(c + 2) * RANK], u3 = urow[(c + 3) * RANK];
          bool ok = rk < RANK;
          mma(acc, qh[kk], ok ? pack_half2(u0, u1) : 0u, ok ? pack_half2(u2, u3) : 0u);
        }
        qu[2 * half] = pack_half2(acc[0] * p.sign, acc[1] * p.sign);
        qu[2 * half + 1] = ROWS == 2 ? pack_half2(acc[2] * p.sign, acc[3] * p.sign) : 0u;
      }
    }
#endif
    Rows r;
    r.kc = p.kc + bh * p.s_kc; r.vc = p.vc + bh * p.s_vc;
    r.ks = p.ks + bh * p.s_ks; r.kz = p.kz + bh * p.s_ks;
    r.vs = p.vs + bh * p.s_vs; r.vz = p.vz + bh * p.s_vs;
    r.sc = p.sc + bh * p.s_sc; r.ss = p.ss + bh * p.s_ss;
    const int lo = split * p.tps;
    const int hi = min(p.N, lo + p.tps);
    const int c_first = max(lo, (vis / CHUNK) * CHUNK);
    const int nchunks = hi > c_first ? (hi - c_first + CHUNK - 1) / CHUNK : 0;
    unsigned char* ring = smem + warp * (NSTAGE * STAGE_BYTES);
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
      const unsigned char* stg = ring + (c % NSTAGE) * STAGE_BYTES;
      const int c0 = c_first + c * CHUNK;
      float s[8][4];
      qk_quantized(s, qh, qu, stg, g, t, lane);
      u32 pa[4][4];
      softmax_chunk(s, st, c0, vis, hi, t, p.cap2, pa);
      pv_quantized(st, pa, stg, g, t);
      __syncwarp();
    }
  } else {
    const long long roff = (long long)bh;
    const int lo = (split - p.n_qsplits) * CHUNK;
    const int hi = min(p.R, lo + CHUNK);
    if (vis - p.N < hi)
      residual_chunk(st, qh, p.kr + roff * p.s_kr, p.vr + roff * p.s_vr, lo, hi, vis - p.N, g, t, p.cap2);
  }
  // finish: row sums over the quad, then this lane's 2 x 16 output channels 32t + j, 32t + 16 + j
#pragma unroll
  for (int r = 0; r < ROWS; ++r) {
    st.l[r] += __shfl_xor_sync(0xffffffffu, st.l[r], 1);
    st.l[r] += __shfl_xor_sync(0xffffffffu, st.l[r], 2);
  }
#pragma unroll
  for (int r = 0; r < ROWS; ++r) {
    const int head = g + 8 * r;
    if (head >= GQ) continue;
    const long long row = (long long)bh * GQ + head;
    const float inv = st.l[r] > 0.f ? 1.0f / st.l[r] : 0.0f;
    if (p.S == 1) {
      u16* dst = p.out + row * D;
#pragma unroll
      for (int j = 0; j < 16; ++j) {
        float a = st.o[j][2 * r] * inv, c = st.o[j][2 * r + 1] * inv;
#if RES_BF16
        u32 ua = __float_as_uint(a), uc = __float_as_uint(c);
        ua += 0x7fffu + ((ua >> 16) & 1u); uc += 0x7fffu + ((uc >> 16) & 1u);  // round to nearest even
        dst[32 * t + j] = (u16)(ua >> 16); dst[32 * t + 16 + j] = (u16)(uc >> 16);
#else
        u32 hv = pack_half2(a, c);
        dst[32 * t + j] = (u16)(hv & 0xffffu); dst[32 * t + 16 + j] = (u16)(hv >> 16);
#endif
      }
    } else {
      float* dst = p.o_part + (row * p.S + split) * D;
#pragma unroll
      for (int j = 0; j < 16; j += 4) {
        *(float4*)(dst + 32 * t + j) = make_float4(st.o[j][2 * r] * inv, st.o[j + 1][2 * r] * inv,
                                                   st.o[j + 2][2 * r] * inv, st.o[j + 3][2 * r] * inv);
        *(float4*)(dst + 32 * t + 16 + j) =
            make_float4(st.o[j][2 * r + 1] * inv, st.o[j + 1][2 * r + 1] * inv,
                        st.o[j + 2][2 * r + 1] * inv, st.o[j + 3][2 * r + 1] * inv);
      }
      if (t == 0) p.lse[row * p.S + split] = st.l[r] > 0.f ? st.m[r] + lg2(st.l[r]) : NEG_INF;
    }
  }
}
