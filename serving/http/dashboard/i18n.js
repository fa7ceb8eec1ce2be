// English and Vietnamese strings of the dashboard; t(key) picks the current language.
"use strict";

const STRINGS = {
  en: {
    "tab.ward": "Ward board", "tab.worklist": "Imaging worklist", "tab.system": "System",
    "logout": "Sign out", "banner": "AI results: not for clinical use.",
    "login.label": "Access token", "login.submit": "Sign in", "login.bad": "This token was not accepted.",
    "ward.empty": "No bed has sent vitals in the last hour.", "ward.unassigned": "No bed",
    "ward.filter": "Ward", "ward.all": "All wards",
    "hr": "HR", "rr": "RR", "spo2": "SpO₂", "bp": "BP", "temp": "Temp",
    "news2": "NEWS2", "risk": "Deterioration", "alerts": "Alerts", "no.alerts": "No active alert",
    "band.low": "low", "band.low-medium": "low-medium", "band.medium": "medium", "band.high": "high",
    "live": "Live", "reconnecting": "Reconnecting…", "polling": "Polling",
    "wl.received": "Received", "wl.patient": "Patient", "wl.modality": "Modality", "wl.status": "Status",
    "wl.results": "Model results", "wl.overlay": "Overlay", "wl.empty": "No study received yet.",
    "wl.positive": "positive", "wl.negative": "negative", "wl.outside": "outside the model's training distribution: no call", "wl.report": "FHIR report", "wl.sr": "SR",
    "status.receiving": "receiving", "status.complete": "complete", "status.done": "done",
    "status.failed": "failed", "status.unrouted": "no model", "status.refused": "refused",
    "sys.models": "Models", "sys.name": "Name", "sys.version": "Version", "sys.engine": "Engine",
    "sys.device": "Device", "sys.components": "Components", "sys.delivery": "Delivery and audit",
    "sys.outbox": "Outbox", "sys.dead": "Dead letters", "sys.parked": "parked", "sys.audit": "Audit entries",
    "sys.heartbeat": "Heartbeat age (s)",
    "forbidden": "Your role may not see this page.", "close": "Close",
    "fb.review": "Review", "fb.missed": "Missed finding", "fb.verdict": "Verdict", "fb.agree": "Agree",
    "fb.disagree": "Disagree", "fb.reason": "Reason", "fb.false-positive": "False positive",
    "fb.wrong-location": "Wrong location", "fb.missed-finding": "Missed finding", "fb.comment": "Comment",
    "fb.send": "Save", "fb.point": "Missed finding or wrong location: click where it is.",
    "fb.helpful": "Helpful", "fb.not-helpful": "Not helpful", "fb.thanks": "Noted",
  },
  vi: {
    "tab.ward": "Bảng theo dõi khoa", "tab.worklist": "Danh sách ca chụp", "tab.system": "Hệ thống",
    "logout": "Đăng xuất", "banner": "Kết quả AI: không dùng cho chẩn đoán lâm sàng.",
    "login.label": "Mã truy cập", "login.submit": "Đăng nhập", "login.bad": "Mã truy cập không được chấp nhận.",
    "ward.empty": "Chưa có giường nào gửi dấu hiệu sinh tồn trong một giờ qua.", "ward.unassigned": "Chưa xếp giường",
    "ward.filter": "Khoa", "ward.all": "Tất cả các khoa",
    "hr": "Nhịp tim", "rr": "Nhịp thở", "spo2": "SpO₂", "bp": "Huyết áp", "temp": "Nhiệt độ",
    "news2": "NEWS2", "risk": "Nguy cơ diễn biến xấu", "alerts": "Cảnh báo", "no.alerts": "Không có cảnh báo",
    "band.low": "thấp", "band.low-medium": "thấp-trung bình", "band.medium": "trung bình", "band.high": "cao",
    "live": "Trực tiếp", "reconnecting": "Đang kết nối lại…", "polling": "Cập nhật định kỳ",
    "wl.received": "Thời điểm nhận", "wl.patient": "Bệnh nhân", "wl.modality": "Loại ảnh", "wl.status": "Trạng thái",
    "wl.results": "Kết quả mô hình", "wl.overlay": "Ảnh chồng", "wl.empty": "Chưa nhận ca chụp nào.",
    "wl.positive": "dương tính", "wl.negative": "âm tính", "wl.outside": "ngoài phân bố dữ liệu huấn luyện của mô hình: không kết luận", "wl.report": "Báo cáo FHIR", "wl.sr": "SR",
    "status.receiving": "đang nhận", "status.complete": "đã nhận đủ", "status.done": "hoàn tất",
    "status.failed": "lỗi", "status.unrouted": "không có mô hình", "status.refused": "bị từ chối",
    "sys.models": "Mô hình", "sys.name": "Tên", "sys.version": "Phiên bản", "sys.engine": "Bộ suy luận",
    "sys.device": "Thiết bị", "sys.components": "Thành phần", "sys.delivery": "Gửi kết quả và kiểm toán",
    "sys.outbox": "Hàng đợi gửi", "sys.dead": "Thư lỗi", "sys.parked": "đang giữ", "sys.audit": "Bản ghi kiểm toán",
    "sys.heartbeat": "Nhịp tim hệ thống (giây)",
    "forbidden": "Vai trò của bạn không được xem trang này.", "close": "Đóng",
    "fb.review": "Đánh giá", "fb.missed": "Bỏ sót tổn thương", "fb.verdict": "Nhận định", "fb.agree": "Đồng ý",
    "fb.disagree": "Không đồng ý", "fb.reason": "Lý do", "fb.false-positive": "Dương tính giả",
    "fb.wrong-location": "Sai vị trí", "fb.missed-finding": "Bỏ sót tổn thương", "fb.comment": "Ghi chú",
    "fb.send": "Lưu", "fb.point": "Bỏ sót hoặc sai vị trí: bấm vào chỗ tổn thương.",
    "fb.helpful": "Hữu ích", "fb.not-helpful": "Không hữu ích", "fb.thanks": "Đã ghi nhận",
  },
};

let LANG = localStorage.getItem("medgate.lang") || (navigator.language.startsWith("vi") ? "vi" : "en");

function t(key) {
  return (STRINGS[LANG] && STRINGS[LANG][key]) || STRINGS.en[key] || key;
}

function applyLanguage(lang) {
  if (lang) { LANG = STRINGS[lang] ? lang : "en"; localStorage.setItem("medgate.lang", LANG); }
  document.documentElement.lang = LANG;
  document.querySelectorAll("[data-i18n]").forEach((el) => { el.textContent = t(el.dataset.i18n); });
  document.querySelectorAll("button[data-lang]").forEach((b) => b.classList.toggle("on", b.dataset.lang === LANG));
}
