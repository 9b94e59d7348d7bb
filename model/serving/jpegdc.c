/* The luma of a baseline JPEG at 1/8 scale, read from the DC coefficients alone.
 *
 * A 12-megapixel phone photo is framed from a ~500 px image, which is what libjpeg gives at 1/8
 * scale: one pixel per 8x8 block, its DC value. libjpeg still decodes every AC coefficient to find
 * where each block ends, and that Huffman decoding is nearly all of a photo's cost. This reader
 * skips the AC coefficients with look-ups of 12 bits that take code and value bits together, and
 * as many whole symbols as those bits hold, from data unstuffed beforehand so that refilling the
 * bit buffer needs no branch. It gives the pixels libjpeg-turbo gives for draft("L") at 1/8 scale:
 * (DC * q + 4) >> 3, plus 128, through libjpeg's range limit.
 *
 * It reads only the common case: 8-bit baseline or extended Huffman, one interleaved scan, one
 * component or three (YCbCr, luma at full resolution), restart markers allowed, and in the header
 * only APPn (not Adobe's APP14), COM, DQT, DHT, DRI, SOF0/1 and SOS. For anything else, or anything
 * damaged, it returns None and the caller decodes with Pillow, which words the error. The rule that
 * a file it reads gives libjpeg's pixels is fuzzed in CI (scripts/fuzz-jpegdc.sh, tests/fuzz/).
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>

#define LOOKUP_BITS 12
#define END_OF_BLOCK 64
#define MULTI_EOB (1u << 16)

typedef struct {
    /* Canonical decoding (F.2.2.3): maxcode/valptr by length, then the values. */
    int32_t maxcode[18];
    int32_t valoffset[18];
    uint8_t values[256];
    /* The next LOOKUP_BITS bits -> (bits to drop) | (value or coefficient advance << 8); 0 = slow path. */
    uint16_t fast[1 << LOOKUP_BITS];
    /* AC only: as many whole symbols as the next LOOKUP_BITS bits hold, before and including an
     * end of block -> (bits) | (coefficient advance << 8) | MULTI_EOB; 0 = decode one by one. */
    uint32_t multi[1 << LOOKUP_BITS];
    int defined;
} Table;

/* Entropy-coded data with the stuffing taken out, read MSB first (branch-free refills). */
typedef struct {
    const uint8_t *base, *p;
    uint64_t bits; /* left-aligned */
    int count;     /* valid bits in the buffer, at least 56 after a refill */
} Reader;

/* libjpeg's limit on the blocks in an MCU (D_MAX_BLOCKS_IN_MCU); the reader refuses more. */
#define MAX_MCU_BLOCKS 10
/* Bytes of zeros after the copied data. The scan is checked against the data's end only between MCUs,
 * so an MCU of damaged data may run into the padding: at most MAX_MCU_BLOCKS blocks of 64 symbols of
 * at most 31 bits (a 16-bit code and 15 value bits), plus the bit buffer's 8 bytes of look-ahead and a
 * refill's 8-byte load. That is the one invariant that keeps every read in bounds. */
#define PAD 4096
_Static_assert(PAD >= (MAX_MCU_BLOCKS * 64 * 31 + 7) / 8 + 8 + 8,
               "PAD must hold what one MCU of MAX_MCU_BLOCKS blocks can read past the data");

static int build_table(Table *t, const uint8_t *counts, const uint8_t *vals, int nvals, int ac) {
    int code = 0, k = 0;
    uint8_t lengths[256];
    uint16_t codes[256];
    memset(t->fast, 0, sizeof t->fast);
    for (int len = 1; len <= 16; len++) {
        t->valoffset[len] = k - code;
        for (int i = 0; i < counts[len - 1]; i++) {
            if (k >= nvals) return -1;
            lengths[k] = (uint8_t)len;
            codes[k++] = (uint16_t)code++;
        }
        if (code >= (1 << len)) return -1; /* over-subscribed, or an all-ones code: libjpeg refuses both */
        t->maxcode[len] = counts[len - 1] ? code - 1 : -1;
        code <<= 1;
    }
    t->maxcode[17] = 0x7fffffff;
    if (!ac)
        for (int i = 0; i < k; i++)
            if (vals[i] > 15) return -1; /* libjpeg refuses such a DC table */
    memcpy(t->values, vals, (size_t)nvals);
    for (int i = 0; i < k; i++) {
        int len = lengths[i], v = vals[i], extra, entry;
        if (ac) {
            int r = v >> 4, s = v & 15;
            extra = s;
            entry = s ? (r + 1) : (r == 15 ? 16 : END_OF_BLOCK);
        } else {
            extra = 0;
            entry = v;
        }
        if (len + extra > LOOKUP_BITS) continue;
        int shift = LOOKUP_BITS - len;
        int first = codes[i] << shift, span = 1 << shift;
        for (int j = 0; j < span; j++) t->fast[first + j] = (uint16_t)((len + extra) | (entry << 8));
    }
    if (ac) {
        for (int i = 0; i < (1 << LOOKUP_BITS); i++) {
            int pos = 0, advance = 0;
            uint32_t eob = 0;
            for (;;) {
                uint16_t e = t->fast[(i << pos) & ((1 << LOOKUP_BITS) - 1)];
                int len = e & 0xff, step = e >> 8;
                if (!e || pos + len > LOOKUP_BITS) break;
                pos += len;
                if (step == END_OF_BLOCK) { eob = MULTI_EOB; break; }
                advance += step;
                if (advance >= 63) break; /* a block never holds more */
            }
            t->multi[i] = pos ? ((uint32_t)pos | (uint32_t)advance << 8 | eob) : 0;
        }
    }
    t->defined = 1;
    return 0;
}

static inline void refill(Reader *r) {
    uint64_t w;
    memcpy(&w, r->p, 8);
    r->bits |= __builtin_bswap64(w) >> r->count;
    r->p += (63 - r->count) >> 3;
    r->count |= 56;
}

/* Bits read so far from r->base. */
static inline long consumed(const Reader *r) { return (long)(r->p - r->base) * 8 - r->count; }

/* Copies entropy-coded data from *src to out, unstuffing 0xFF00, up to the next marker; returns the
 * bytes written and leaves *src on the marker, or at the end of the data. */
static Py_ssize_t unstuff(const uint8_t **src, const uint8_t *end, uint8_t *out) {
    const uint8_t *s = *src;
    uint8_t *o = out;
    for (;;) {
        const uint8_t *ff = memchr(s, 0xFF, (size_t)(end - s));
        if (!ff) {
            memcpy(o, s, (size_t)(end - s));
            o += end - s;
            s = end;
            break;
        }
        memcpy(o, s, (size_t)(ff - s));
        o += ff - s;
        if (ff + 1 < end && ff[1] == 0x00) {
            *o++ = 0xFF;
            s = ff + 2;
        } else {
            s = ff;
            break;
        }
    }
    *src = s;
    return o - out;
}

static inline uint32_t peek(Reader *r, int n) { return (uint32_t)(r->bits >> (64 - n)); }
static inline void drop(Reader *r, int n) { r->bits <<= n; r->count -= n; }

/* One Huffman symbol by the canonical slow path; -1 on a code no table has. */
static int decode_slow(Reader *r, const Table *t, int *len_out) {
    for (int len = 1; len <= 16; len++) {
        int32_t code = (int32_t)peek(r, len);
        if (code <= t->maxcode[len]) {
            *len_out = len;
            return t->values[t->valoffset[len] + code];
        }
    }
    return -1;
}

static inline int extend(uint32_t v, int s) { return v < (1u << (s - 1)) ? (int)v - (1 << s) + 1 : (int)v; }

/* Decodes one block: its DC difference into *diff; skips its AC coefficients. 0, or -1 on a bad code. */
static inline int block(Reader *r, const Table *dc, const Table *ac, int *diff) {
    int len, s;
    refill(r);
    uint16_t e = dc->fast[peek(r, LOOKUP_BITS)];
    if (e) {
        len = e & 0xff;
        s = e >> 8;
    } else {
        s = decode_slow(r, dc, &len); /* at most 15: build_table refuses larger DC values */
        if (s < 0) return -1;
    }
    drop(r, len);
    if (s) {
        refill(r);
        *diff = extend(peek(r, s), s);
        drop(r, s);
    } else {
        *diff = 0;
    }
    for (int k = 1; k < 64;) {
        refill(r);
        uint32_t m = ac->multi[peek(r, LOOKUP_BITS)];
        if (m && k + (int)((m >> 8) & 0xff) < 64) {
            drop(r, m & 0xff);
            if (m & MULTI_EOB) break;
            k += (m >> 8) & 0xff;
            continue;
        }
        e = ac->fast[peek(r, LOOKUP_BITS)];
        if (e) {
            drop(r, e & 0xff);
            k += e >> 8;
            continue;
        }
        int rs = decode_slow(r, ac, &len);
        if (rs < 0) return -1;
        drop(r, len);
        int run = rs >> 4, size = rs & 15;
        if (size) {
            refill(r);
            drop(r, size);
            k += run + 1;
        } else if (run == 15) {
            k += 16;
        } else {
            break;
        }
    }
    return 0;
}

/* libjpeg's 1x1 inverse DCT: the coefficient as a short, dequantised, descaled by 8, then its
 * range-limit table, which clamps within +-512 of mid-grey and wraps beyond. */
static inline uint8_t sample(uint32_t dc, int q) {
    int x = (((int)(int16_t)dc * q + 4) >> 3) & 1023;
    return (uint8_t)(x < 128 ? x + 128 : x < 512 ? 255 : x < 896 ? 0 : x - 896);
}

static inline int u16(const uint8_t *p) { return (p[0] << 8) | p[1]; }

static PyObject *luma_dc(PyObject *self, PyObject *arg) {
    Py_buffer view;
    if (PyObject_GetBuffer(arg, &view, PyBUF_SIMPLE) < 0) return NULL;
    const uint8_t *data = view.buf, *end = data + view.len, *p = data + 2;
    PyObject *result = NULL;
    Table *tables = NULL; /* dc 0-3, ac 4-7 */
    uint16_t quant[4][64];
    int quant_defined[4] = {0};
    int width = 0, height = 0, ncomp = 0, restart = 0;
    int comp_id[3], comp_h[3], comp_v[3], comp_q[3];
    int scan_ncomp = 0, scan_dc[3], scan_ac[3];

    if (view.len < 4 || data[0] != 0xFF || data[1] != 0xD8) goto unsupported;
    tables = PyMem_Calloc(8, sizeof(Table));
    if (!tables) { PyErr_NoMemory(); goto done; }
    /* Markers up to the first scan. */
    for (;;) {
        while (p < end && *p == 0xFF && p + 1 < end && p[1] == 0xFF) p++; /* fill bytes */
        if (p + 4 > end || p[0] != 0xFF) goto unsupported;
        int marker = p[1], len = u16(p + 2);
        const uint8_t *seg = p + 4, *next = p + 2 + len;
        if (len < 2 || next > end) goto unsupported;
        if (marker == 0xC0 || marker == 0xC1) { /* baseline, extended Huffman */
            if (ncomp || len < 8 || seg[0] != 8) goto unsupported;
            height = u16(seg + 1);
            width = u16(seg + 3);
            ncomp = seg[5];
            if ((ncomp != 1 && ncomp != 3) || len != 8 + 3 * ncomp || !width || !height || width > 65500
                || height > 65500)
                goto unsupported;
            for (int c = 0; c < ncomp; c++) {
                comp_id[c] = seg[6 + 3 * c];
                comp_h[c] = seg[7 + 3 * c] >> 4;
                comp_v[c] = seg[7 + 3 * c] & 15;
                comp_q[c] = seg[8 + 3 * c];
                if (comp_h[c] < 1 || comp_h[c] > 4 || comp_v[c] < 1 || comp_v[c] > 4 || comp_q[c] > 3)
                    goto unsupported;
            }
        } else if (marker >= 0xC2 && marker <= 0xCF && marker != 0xC4) {
            goto unsupported; /* progressive, lossless, arithmetic, hierarchical */
        } else if (marker == 0xC4) {
            const uint8_t *q = seg;
            while (q < next) {
                if (q + 17 > next) goto unsupported;
                int cls = q[0] >> 4, id = q[0] & 15, n = 0;
                for (int i = 1; i <= 16; i++) n += q[i];
                if (cls > 1 || id > 3 || n > 256 || q + 17 + n > next) goto unsupported;
                if (build_table(&tables[cls * 4 + id], q + 1, q + 17, n, cls) < 0) goto unsupported;
                q += 17 + n;
            }
        } else if (marker == 0xDB) {
            const uint8_t *q = seg;
            while (q < next) {
                int precision = q[0] >> 4, id = q[0] & 15;
                if (id > 3 || precision > 1 || q + 1 + 64 * (precision + 1) > next) goto unsupported;
                for (int i = 0; i < 64; i++)
                    quant[id][i] = precision ? (uint16_t)u16(q + 1 + 2 * i) : q[1 + i];
                quant_defined[id] = 1;
                q += 1 + 64 * (precision + 1);
            }
        } else if (marker == 0xDD) {
            if (len != 4) goto unsupported;
            restart = u16(seg);
        } else if (marker == 0xEE) {
            goto unsupported; /* Adobe: its transform flag decides the colour space; libjpeg reads it */
        } else if (marker == 0xDA) {
            if (!ncomp || len < 6) goto unsupported;
            scan_ncomp = seg[0];
            if (scan_ncomp != ncomp || len != 6 + 2 * scan_ncomp) goto unsupported;
            for (int i = 0; i < scan_ncomp; i++) {
                if (seg[1 + 2 * i] != comp_id[i]) goto unsupported; /* components in frame order */
                scan_dc[i] = seg[2 + 2 * i] >> 4;
                scan_ac[i] = seg[2 + 2 * i] & 15;
                if (scan_dc[i] > 3 || scan_ac[i] > 3 || !tables[scan_dc[i]].defined
                    || !tables[4 + scan_ac[i]].defined)
                    goto unsupported;
            }
            const uint8_t *ss = seg + 1 + 2 * scan_ncomp;
            if (ss[0] != 0 || ss[1] != 63 || ss[2] != 0) goto unsupported;
            p = next;
            break;
        } else if (!(marker >= 0xE0 && marker <= 0xEF) && marker != 0xFE) {
            /* Only APPn and COM are skipped. Anything else (FF 00, a second SOI, EOI, RSTn, DNL, DHP, EXP,
             * JPGn, TEM, reserved codes) is libjpeg's to judge: it refuses most, and skips FF 00 as stray
             * bytes, so that what we would take for a segment can hide one it reads (a DQT). */
            goto unsupported;
        }
        p = next;
    }
    /* libjpeg refuses a scan with any component's table undefined, chroma included. */
    for (int c = 0; c < ncomp; c++)
        if (!quant_defined[comp_q[c]]) goto unsupported;
    if (ncomp == 3) {
        /* libjpeg guesses YCbCr for ids 1,2,3 (JFIF) and RGB for 'R','G','B'; read only the first. */
        if (!(comp_id[0] == 1 && comp_id[1] == 2 && comp_id[2] == 3)) goto unsupported;
        int blocks = 0;
        for (int c = 0; c < 3; c++) {
            blocks += comp_h[c] * comp_v[c];
            /* luma at full size, chroma at a whole fraction of it: what libjpeg upsamples */
            if (comp_h[0] % comp_h[c] || comp_v[0] % comp_v[c]) goto unsupported;
        }
        if (blocks > MAX_MCU_BLOCKS) goto unsupported; /* libjpeg's limit, and what PAD is sized for */
    } else {
        comp_h[0] = comp_v[0] = 1; /* a single component's scan is one block per MCU */
    }
    {
        int hmax = comp_h[0], vmax = comp_v[0];
        int mcux = (width + 8 * hmax - 1) / (8 * hmax), mcuy = (height + 8 * vmax - 1) / (8 * vmax);
        int outw = (width + 7) / 8, outh = (height + 7) / 8;
        long total_mcus = (long)mcux * mcuy;
        int q0 = (int16_t)quant[comp_q[0]][0]; /* libjpeg multiplies in short */
        result = PyBytes_FromStringAndSize(NULL, (Py_ssize_t)outw * outh);
        if (!result) goto done;
        uint8_t *out = (uint8_t *)PyBytes_AS_STRING(result);
        uint32_t pred[3] = {0, 0, 0};
        int next_rst = 0, bad = 0;
        long since_restart = 0, segment_bits = 0;
        uint8_t *clean = PyMem_RawMalloc((size_t)(end - p) + PAD);
        if (!clean) { Py_CLEAR(result); PyErr_NoMemory(); goto done; }
        Reader r = {clean, clean, 0, 0};
        Py_BEGIN_ALLOW_THREADS
        /* One restart interval (or the whole scan) at a time, unstuffed, then decoded. */
        for (long m = 0; m < total_mcus && !bad; m++) {
            if (m == 0 || (restart && since_restart == restart)) {
                if (m) {
                    /* Only padding may be left, then RSTn. */
                    long left = segment_bits - consumed(&r);
                    if (left < 0 || left >= 8 || p + 1 >= end || p[0] != 0xFF || p[1] != 0xD0 + next_rst) {
                        bad = 1;
                        break;
                    }
                    p += 2;
                    next_rst = (next_rst + 1) & 7;
                    pred[0] = pred[1] = pred[2] = 0;
                }
                Py_ssize_t n = unstuff(&p, end, clean);
                memset(clean + n, 0, PAD);
                r.p = clean;
                r.bits = 0;
                r.count = 0;
                segment_bits = (long)n * 8;
                since_restart = 0;
            }
            since_restart++;
            int my = (int)(m / mcux), mx = (int)(m % mcux);
            for (int c = 0; c < ncomp && !bad; c++) {
                const Table *dc = &tables[scan_dc[c]], *ac = &tables[4 + scan_ac[c]];
                for (int by = 0; by < comp_v[c] && !bad; by++) {
                    for (int bx = 0; bx < comp_h[c]; bx++) {
                        int diff;
                        if (block(&r, dc, ac, &diff) < 0) { bad = 1; break; }
                        pred[c] += (uint32_t)diff; /* wraps as libjpeg's int does in practice */
                        if (c == 0) {
                            int y = my * vmax + by, x = mx * hmax + bx;
                            if (y < outh && x < outw) {
                                out[(long)y * outw + x] = sample(pred[0], q0);
                            }
                        }
                    }
                }
            }
            if (consumed(&r) > segment_bits) bad = 1; /* the data ended inside the scan */
        }
        /* One scan, then the end of the image: anything else (more scans, DNL) is libjpeg's. */
        if (!bad) {
            long left = segment_bits - consumed(&r);
            if (left < 0 || left >= 8 || p + 1 >= end || p[0] != 0xFF || p[1] != 0xD9) bad = 1;
        }
        Py_END_ALLOW_THREADS
        PyMem_RawFree(clean);
        if (bad) { Py_CLEAR(result); goto unsupported; }
        result = Py_BuildValue("(iiN)", outw, outh, result);
        goto done;
    }
unsupported:
    Py_XDECREF(result);
    result = Py_NewRef(Py_None);
done:
    PyMem_Free(tables);
    PyBuffer_Release(&view);
    return result;
}

static PyMethodDef methods[] = {
    {"luma_dc", luma_dc, METH_O,
     "luma_dc(data) -> (width, height, bytes) or None: a baseline JPEG's luma at 1/8 scale."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_jpegdc", NULL, -1, methods};

PyMODINIT_FUNC PyInit__jpegdc(void) { return PyModule_Create(&module); }
